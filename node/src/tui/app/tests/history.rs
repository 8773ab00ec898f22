//! Unread counts and history pages: what is held, merged and read again.

use super::*;

#[test]
fn new_messages_elsewhere_count_as_unread_until_selected() {
    let mut app = connected();
    app.handle_event(&message_event("r1", "#lunch", "bob", "soup?"));
    app.handle_event(&message_event("r2", "#lunch", "carol", "yes"));
    // The same message twice (gossip and gap fill) counts once.
    app.handle_event(&message_event("r2", "#lunch", "carol", "yes"));
    assert_eq!(app.conversations[1].unread, 2);
    assert_eq!(app.conversations[1].messages.len(), 2);
    // In the selected conversation: shown, not unread.
    app.handle_event(&message_event("m5", "bob", "bob", "there?"));
    assert_eq!(app.conversations[0].unread, 0);
    assert_eq!(app.conversations[0].messages.back().unwrap().text, "there?");
    // A message from someone new opens a conversation at the top.
    app.handle_event(&message_event("d1", "dave", "dave", "hello"));
    assert_eq!(app.conversations[0].key, ConvKey::Direct("dave".into()));
    assert_eq!(app.conversations[0].unread, 1);
    assert_eq!(app.selected().map(|c| c.key.label()), Some("bob".into()));
    app.handle_key(key(KeyCode::Tab));
    app.handle_key(key(KeyCode::Tab));
    assert_eq!(app.selected().map(|c| c.key.label()), Some("dave".into()));
    assert_eq!(app.conversations[0].unread, 0);
}

#[test]
fn the_history_page_merges_with_what_arrived_meanwhile() {
    let mut app = connected();
    app.handle_key(key(KeyCode::Tab));
    // A live message arrives before the history answer.
    app.handle_event(&message_event("l3", "#lunch", "bob", "third"));
    app.handle_answer(
        Then::History {
            conv: ConvKey::Room("lunch".into()),
            older: false,
        },
        Ok(json!([
            entry("l1", "#lunch", "alice", "first", "sent"),
            entry("l2", "#lunch", "carol", "second", "received"),
            entry("l3", "#lunch", "bob", "third", "received"),
        ])),
    );
    let texts: Vec<&str> = app.conversations[1]
        .messages
        .iter()
        .map(|m| m.text.as_str())
        .collect();
    assert_eq!(texts, vec!["first", "second", "third"]);
}

#[test]
fn a_fresh_latest_page_keeps_older_pages_held_in_front_of_it() {
    let mut app = connected();
    let bob = ConvKey::Direct("bob".into());
    app.handle_answer(
        Then::History {
            conv: bob.clone(),
            older: true,
        },
        Ok(json!([entry("m0", "bob", "bob", "zero", "received")])),
    );
    app.handle_answer(
        Then::History {
            conv: bob,
            older: false,
        },
        Ok(json!([
            entry("m1", "bob", "bob", "Hi alice", "received"),
            entry("m2", "bob", "alice", "Hi bob", "sent"),
            entry("m3", "bob", "bob", "new", "received"),
        ])),
    );
    let conv = &app.conversations[0];
    let ids: Vec<&str> = conv
        .messages
        .iter()
        .filter_map(|m| m.id.as_deref())
        .collect();
    assert_eq!(ids, vec!["m0", "m1", "m2", "m3"]);
    // "delivered" was seen before; the page's older "sent" does not undo it.
    assert_eq!(conv.messages[2].status, Delivery::Delivered);
    assert!(conv.at_start);
}

#[test]
fn scrolling_up_past_the_top_reads_older_pages() {
    let mut app = connected();
    app.conversations[0].messages.clear();
    let bob = ConvKey::Direct("bob".into());
    // A full page: there may be more before it.
    let page: Vec<Value> = (100..200)
        .map(|i| {
            entry(
                &format!("m{i}"),
                "bob",
                "bob",
                &format!("line {i}"),
                "received",
            )
        })
        .collect();
    app.handle_answer(
        Then::History {
            conv: bob.clone(),
            older: false,
        },
        Ok(Value::Array(page)),
    );
    assert!(!app.conversations[0].at_start);
    // 100 one-line messages in a 10-line pane: the first PageUps scroll without asking.
    let effects = app.handle_key(key(KeyCode::PageUp));
    assert!(calls(&effects).is_empty());
    assert_eq!(app.conversations[0].scroll, 9);
    let mut asked = Vec::new();
    for _ in 0..20 {
        asked.extend(app.handle_key(key(KeyCode::PageUp)));
    }
    // At the top: one request for the page before the oldest held message (not one per key).
    assert_eq!(
        calls(&asked),
        vec![(
            "history",
            json!({"with": "bob", "limit": PAGE, "before": "m100"})
        )]
    );
    let top = app.conversations[0].scroll;
    // 100 messages under their day's heading, less the pane.
    assert_eq!(top, 1 + 100 - 10);
    let older: Vec<Value> = (50..100)
        .map(|i| {
            entry(
                &format!("m{i}"),
                "bob",
                "bob",
                &format!("line {i}"),
                "received",
            )
        })
        .collect();
    app.handle_answer(
        Then::History {
            conv: bob,
            older: true,
        },
        Ok(Value::Array(older)),
    );
    let conv = &app.conversations[0];
    assert_eq!(conv.messages.len(), 150);
    assert_eq!(conv.messages[0].text, "line 50");
    // Fewer than a page came back: that is the beginning.
    assert!(conv.at_start);
    // The view stays where it was (counted from the bottom) and can now go further up.
    assert_eq!(conv.scroll, top);
    app.handle_key(key(KeyCode::PageUp));
    assert_eq!(app.conversations[0].scroll, top + 9);
    let effects = app.handle_key(key(KeyCode::PageUp));
    assert!(calls(&effects).is_empty(), "nothing older to read");
    for _ in 0..30 {
        app.handle_key(key(KeyCode::PageDown));
    }
    assert_eq!(app.conversations[0].scroll, 0);
}

#[test]
fn memory_is_bounded_and_the_bottom_is_read_again_after_going_far_back() {
    let mut app = connected();
    let bob = ConvKey::Direct("bob".into());
    for i in 0..(MAX_KEPT + 10) {
        app.handle_event(&message_event(&format!("n{i}"), "bob", "bob", "x"));
    }
    assert_eq!(app.conversations[0].messages.len(), MAX_KEPT);
    assert!(!app.conversations[0].at_start);
    // Reading far back drops the newest, and the bottom is re-read on the way down.
    app.conversations[0].scroll = 1;
    let older: Vec<Value> = (0..PAGE)
        .map(|i| entry(&format!("o{i}"), "bob", "bob", "old", "received"))
        .collect();
    app.handle_answer(
        Then::History {
            conv: bob,
            older: true,
        },
        Ok(Value::Array(older)),
    );
    let conv = &app.conversations[0];
    assert_eq!(conv.messages.len(), MAX_KEPT);
    assert!(conv.newer_dropped);
    assert_eq!(conv.messages[0].id.as_deref(), Some("o0"));
    let effects = app.handle_key(key(KeyCode::PageDown));
    assert_eq!(
        calls(&effects),
        vec![("history", json!({"with": "bob", "limit": PAGE}))]
    );
}
