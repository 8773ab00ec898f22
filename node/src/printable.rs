//! Text from the network on its way to a terminal: another user's message must not be able to
//! retitle, clear or recolour the reader's terminal, so control characters (C0, C1, ESC) become
//! U+FFFD. `--json` output keeps the exact text.

/// `text` with control characters replaced (newlines kept, tabs as spaces).
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' => '\n',
            '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// [`printable`] on one line: newlines become spaces.
pub fn printable_line(text: &str) -> String {
    printable(text).replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_other_controls_are_defused() {
        let hostile = "hi\u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31m\rthere\tyou\nnext";
        let shown = printable(hostile);
        assert!(
            !shown.chars().any(|c| c.is_control() && c != '\n'),
            "{shown:?}"
        );
        assert_eq!(
            shown,
            "hi\u{fffd}]0;pwned\u{fffd}\u{fffd}[2J\u{fffd}31m\u{fffd}there you\nnext"
        );
        assert_eq!(printable_line("a\nb"), "a b");
        assert_eq!(printable("plain text, ünïcode ✓"), "plain text, ünïcode ✓");
    }
}
