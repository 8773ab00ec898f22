//! A set of keys, each due at a time; the earliest first.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use super::Millis;

/// Keys with deadlines. Setting a key again moves its deadline.
#[derive(Debug, Clone)]
pub struct Deadlines<K> {
    due: BTreeSet<(Millis, K)>,
    by_key: HashMap<K, Millis>,
}

impl<K> Default for Deadlines<K> {
    fn default() -> Self {
        Self {
            due: BTreeSet::new(),
            by_key: HashMap::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> Deadlines<K> {
    pub fn new() -> Self {
        Self::default()
    }

    /// `key` is due at `at` (replacing any earlier deadline for it).
    pub fn set(&mut self, key: K, at: Millis) {
        if let Some(old) = self.by_key.insert(key.clone(), at) {
            self.due.remove(&(old, key.clone()));
        }
        self.due.insert((at, key));
    }

    /// Forgets `key`; true if it had a deadline.
    pub fn remove(&mut self, key: &K) -> bool {
        match self.by_key.remove(key) {
            Some(at) => self.due.remove(&(at, key.clone())),
            None => false,
        }
    }

    pub fn contains(&self, key: &K) -> bool {
        self.by_key.contains_key(key)
    }

    /// When the earliest key is due.
    pub fn next_due(&self) -> Option<Millis> {
        self.due.first().map(|(at, _)| *at)
    }

    /// Removes and returns every key due at or before `now`, earliest first.
    pub fn expire(&mut self, now: Millis) -> Vec<K> {
        let mut expired = Vec::new();
        while let Some((at, _)) = self.due.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.due.pop_first() {
                self.by_key.remove(&key);
                expired.push(key);
            }
        }
        expired
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_expire_in_deadline_order_and_moving_a_deadline_replaces_it() {
        let mut d = Deadlines::new();
        d.set("a", 30);
        d.set("b", 10);
        d.set("c", 20);
        d.set("b", 40);
        assert_eq!(d.next_due(), Some(20));
        assert_eq!(d.expire(19), Vec::<&str>::new());
        assert_eq!(d.expire(30), vec!["c", "a"]);
        assert!(d.remove(&"b"));
        assert!(!d.remove(&"b"));
        assert!(d.is_empty());
        assert_eq!(d.next_due(), None);
    }
}
