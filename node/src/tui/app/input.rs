//! The input line: editing, and Up/Down recall of what was typed.

use std::collections::VecDeque;

use palaver_protocol::wire::MAX_TEXT_LEN;

/// Lines kept for Up/Down recall.
const MAX_RECALL: usize = 50;

/// The input line.
#[derive(Debug, Clone, Default)]
pub(crate) struct Input {
    pub(crate) text: String,
    /// A byte offset on a character boundary.
    pub(crate) cursor: usize,
    recall: VecDeque<String>,
    recalling: Option<usize>,
}

impl Input {
    pub(super) fn insert(&mut self, c: char) {
        if self.text.len() + c.len_utf8() > MAX_TEXT_LEN {
            return;
        }
        self.text.insert(self.cursor, c);
        self.cursor += c.len_utf8();
    }

    pub(super) fn left(&self) -> usize {
        self.text[..self.cursor]
            .char_indices()
            .next_back()
            .map_or(0, |(at, _)| at)
    }

    pub(super) fn right(&self) -> usize {
        self.text[self.cursor..]
            .chars()
            .next()
            .map_or(self.cursor, |c| self.cursor + c.len_utf8())
    }

    pub(super) fn backspace(&mut self) {
        let at = self.left();
        self.text.replace_range(at..self.cursor, "");
        self.cursor = at;
    }

    pub(super) fn delete(&mut self) {
        let end = self.right();
        self.text.replace_range(self.cursor..end, "");
    }

    pub(super) fn delete_word(&mut self) {
        let before = &self.text[..self.cursor];
        let trimmed = before.trim_end();
        let at = trimmed.rfind(char::is_whitespace).map_or(0, |at| at + 1);
        self.text.replace_range(at..self.cursor, "");
        self.cursor = at;
    }

    pub(super) fn set(&mut self, text: String) {
        self.cursor = text.len();
        self.text = text;
    }

    /// Empties the line, remembering it for recall.
    pub(super) fn take(&mut self) -> String {
        let text = std::mem::take(&mut self.text);
        self.cursor = 0;
        self.recalling = None;
        if !text.trim().is_empty() && self.recall.back() != Some(&text) {
            self.recall.push_back(text.clone());
            if self.recall.len() > MAX_RECALL {
                self.recall.pop_front();
            }
        }
        text
    }

    pub(super) fn recall_older(&mut self) {
        let at = match self.recalling {
            Some(0) => return,
            Some(at) => at - 1,
            None if self.recall.is_empty() => return,
            None => self.recall.len() - 1,
        };
        self.recalling = Some(at);
        let text = self.recall[at].clone();
        self.set(text);
    }

    pub(super) fn recall_newer(&mut self) {
        let Some(at) = self.recalling else { return };
        if at + 1 < self.recall.len() {
            self.recalling = Some(at + 1);
            let text = self.recall[at + 1].clone();
            self.set(text);
        } else {
            self.recalling = None;
            self.set(String::new());
        }
    }
}
