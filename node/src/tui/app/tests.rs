use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde_json::{Value, json};

use super::*;

mod history;

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn ctrl(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
}

fn type_line(app: &mut App, line: &str) -> Vec<Effect> {
    for c in line.chars() {
        assert!(app.handle_key(key(KeyCode::Char(c))).is_empty());
    }
    app.handle_key(key(KeyCode::Enter))
}

fn calls(effects: &[Effect]) -> Vec<(&'static str, Value)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Call { method, params, .. } => Some((*method, params.clone())),
            _ => None,
        })
        .collect()
}

fn then_of(effects: &[Effect], wanted: &str) -> Then {
    effects
        .iter()
        .find_map(|e| match e {
            Effect::Call { method, then, .. } if *method == wanted => Some(then.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {wanted} call in {effects:?}"))
}

fn entry(id: &str, conversation: &str, from: &str, text: &str, status: &str) -> Value {
    json!({"id": id, "conversation": conversation, "from": from, "text": text,
           "sent_at": 1_700_000_000_000u64, "status": status})
}

fn message_event(id: &str, conversation: &str, from: &str, text: &str) -> Value {
    let mut event = entry(id, conversation, from, text, "received");
    event["type"] = json!("message");
    event
}

/// An app connected to a daemon as alice, with conversations bob and #lunch (bob's loaded).
fn connected() -> App {
    let mut app = App::new("/tmp/palaver.sock");
    app.now = 1_700_000_000_000;
    app.resize(40, 10);
    let effects = app.connected();
    assert_eq!(
        calls(&effects).iter().map(|(m, _)| *m).collect::<Vec<_>>(),
        vec!["status", "conversations", "room.list", "peers"]
    );
    let effects = app.handle_answer(
        Then::Status,
        Ok(json!({"name": "alice", "rendezvous": {"connected": true, "logged_in": true}})),
    );
    assert_eq!(calls(&effects), vec![("presence", json!({"names": []}))]);
    let effects = app.handle_answer(
        Then::Conversations,
        Ok(json!([
            {"conversation": "bob", "kind": "direct", "last_at": 2},
            {"conversation": "#lunch", "kind": "room", "last_at": 1},
        ])),
    );
    assert_eq!(
        calls(&effects),
        vec![("history", json!({"with": "bob", "limit": PAGE}))]
    );
    app.handle_answer(
        Then::History {
            conv: ConvKey::Direct("bob".into()),
            older: false,
        },
        Ok(json!([
            entry("m1", "bob", "bob", "Hi alice", "received"),
            entry("m2", "bob", "alice", "Hi bob", "delivered"),
        ])),
    );
    app
}

#[test]
fn connecting_reads_conversations_and_the_selected_history() {
    let app = connected();
    assert_eq!(app.me.as_deref(), Some("alice"));
    assert_eq!(app.daemon, Daemon::Up);
    let keys: Vec<String> = app.conversations.iter().map(|c| c.key.label()).collect();
    assert_eq!(keys, vec!["bob", "#lunch"]);
    let bob = &app.conversations[0];
    assert!(bob.loaded && !bob.loading && bob.at_start);
    let texts: Vec<&str> = bob.messages.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, vec!["Hi alice", "Hi bob"]);
    assert_eq!(bob.messages[1].status, Delivery::Delivered);
}

#[test]
fn tab_and_ctrl_n_p_switch_conversations_and_load_them() {
    let mut app = connected();
    let effects = app.handle_key(key(KeyCode::Tab));
    assert_eq!(app.selected().map(|c| c.key.label()), Some("#lunch".into()));
    assert_eq!(
        calls(&effects),
        vec![
            ("history", json!({"room": "lunch", "limit": PAGE})),
            ("room.members", json!({"room": "lunch"})),
        ]
    );
    // Loading already: switching back and forth asks again only for the members.
    app.handle_key(key(KeyCode::BackTab));
    assert_eq!(app.selected().map(|c| c.key.label()), Some("bob".into()));
    let effects = app.handle_key(ctrl('n'));
    assert_eq!(
        calls(&effects),
        vec![("room.members", json!({"room": "lunch"}))]
    );
    app.handle_key(ctrl('n'));
    assert_eq!(app.selected().map(|c| c.key.label()), Some("bob".into()));
    app.handle_key(ctrl('p'));
    assert_eq!(app.selected().map(|c| c.key.label()), Some("#lunch".into()));
}

#[test]
fn plain_text_is_sent_to_the_selected_conversation_and_shown_at_once() {
    let mut app = connected();
    let effects = type_line(&mut app, "lunch at noon?");
    assert_eq!(
        calls(&effects),
        vec![("send", json!({"to": "bob", "text": "lunch at noon?"}))]
    );
    assert!(app.input.text.is_empty());
    let shown = app.conversations[0].messages.back().cloned().unwrap();
    assert_eq!(
        (shown.from.as_str(), shown.text.as_str(), shown.status),
        ("alice", "lunch at noon?", Delivery::Sending)
    );
    // The daemon answers with the id; delivery events move the mark forward.
    let then = then_of(&effects, "send");
    app.handle_answer(then, Ok(json!({"id": "m3", "status": "sending"})));
    app.handle_event(
        &json!({"type": "delivery", "id": "m3", "conversation": "bob", "status": "delivered"}),
    );
    let shown = app.conversations[0].messages.back().unwrap();
    assert_eq!(shown.id.as_deref(), Some("m3"));
    assert_eq!(shown.status, Delivery::Delivered);
    // A late "sent" does not undo "delivered".
    app.handle_event(
        &json!({"type": "delivery", "id": "m3", "conversation": "bob", "status": "sent"}),
    );
    assert_eq!(
        app.conversations[0].messages.back().unwrap().status,
        Delivery::Delivered
    );
}

#[test]
fn a_delivery_change_that_beats_the_send_answer_is_not_lost() {
    let mut app = connected();
    let effects = type_line(&mut app, "quick");
    app.handle_event(
        &json!({"type": "delivery", "id": "m9", "conversation": "bob", "status": "queued"}),
    );
    app.handle_answer(
        then_of(&effects, "send"),
        Ok(json!({"id": "m9", "status": "sending"})),
    );
    assert_eq!(
        app.conversations[0].messages.back().unwrap().status,
        Delivery::Queued
    );
}

#[test]
fn a_refused_send_is_marked_failed_with_the_reason() {
    let mut app = connected();
    let effects = type_line(&mut app, "hello?");
    app.handle_answer(then_of(&effects, "send"), Err("unknown user".into()));
    assert_eq!(
        app.conversations[0].messages.back().unwrap().status,
        Delivery::Failed
    );
    let notice = app.notice.clone().unwrap();
    assert!(
        notice.error && notice.text.contains("unknown user"),
        "{notice:?}"
    );
}

#[test]
fn msg_to_an_unknown_user_says_so_and_adds_no_contact() {
    let mut app = connected();
    let before = app.conversations.len();
    let effects = type_line(&mut app, "/msg nosuchuser hello?");
    assert_eq!(
        calls(&effects),
        vec![("verify", json!({"name": "nosuchuser"}))]
    );
    let effects = app.handle_answer(
        then_of(&effects, "verify"),
        Err("unknown user nosuchuser at this rendezvous".into()),
    );
    assert!(calls(&effects).is_empty(), "nothing is sent");
    assert_eq!(app.conversations.len(), before, "no conversation was added");
    let notice = app.notice.clone().unwrap();
    assert!(
        notice.error && notice.text.contains("unknown user nosuchuser"),
        "{notice:?}"
    );
}

#[test]
fn msg_opens_a_new_direct_conversation_selects_it_and_sends() {
    let mut app = connected();
    let effects = type_line(&mut app, "/msg Carol hi there");
    // A new name is checked with the daemon first.
    assert_eq!(calls(&effects), vec![("verify", json!({"name": "carol"}))]);
    let effects = app.handle_answer(
        then_of(&effects, "verify"),
        Ok(json!({"name": "carol", "fingerprint": "…"})),
    );
    assert_eq!(app.selected().map(|c| c.key.label()), Some("carol".into()));
    assert_eq!(app.conversations[0].key, ConvKey::Direct("carol".into()));
    assert_eq!(
        calls(&effects),
        vec![
            ("history", json!({"with": "carol", "limit": PAGE})),
            ("send", json!({"to": "carol", "text": "hi there"})),
        ]
    );
    // No history yet with a new contact: an error that means "empty", not a notice.
    app.handle_answer(
        then_of(&effects, "history"),
        Err("no conversation with carol".into()),
    );
    assert!(app.notice.is_none());
    let carol = &app.conversations[0];
    assert_eq!(carol.messages.len(), 1);
    assert!(carol.loaded);
    // Answered: the new contact's presence is asked for.
    let effects = app.handle_answer(
        then_of(&effects, "send"),
        Ok(json!({"id": "c1", "status": "queued"})),
    );
    assert_eq!(
        calls(&effects),
        vec![("presence", json!({"names": ["carol"]}))]
    );
    // /msg to an open conversation just switches to it.
    type_line(&mut app, "/msg bob");
    assert_eq!(app.selected().map(|c| c.key.label()), Some("bob".into()));
    assert_eq!(app.conversations.len(), 3);
}

#[test]
fn room_commands_go_to_the_selected_room() {
    let mut app = connected();
    let effects = type_line(&mut app, "/invite carol");
    assert!(calls(&effects).is_empty());
    assert!(
        app.notice
            .as_ref()
            .unwrap()
            .text
            .contains("works in a room")
    );

    app.handle_key(key(KeyCode::Tab));
    let effects = type_line(&mut app, "/invite carol");
    assert_eq!(
        calls(&effects),
        vec![("room.invite", json!({"room": "lunch", "name": "carol"}))]
    );
    let effects = app.handle_answer(then_of(&effects, "room.invite"), Ok(json!(true)));
    assert_eq!(app.notice.as_ref().unwrap().text, "invited carol to #lunch");
    assert_eq!(
        calls(&effects),
        vec![("room.members", json!({"room": "lunch"}))]
    );
    let effects = type_line(&mut app, "/kick carol");
    assert_eq!(
        calls(&effects),
        vec![("room.kick", json!({"room": "lunch", "name": "carol"}))]
    );
    let effects = type_line(&mut app, "hello room");
    assert_eq!(
        calls(&effects),
        vec![("room.send", json!({"room": "lunch", "text": "hello room"}))]
    );
    let effects = type_line(&mut app, "/leave");
    assert_eq!(
        calls(&effects),
        vec![("room.leave", json!({"room": "lunch"}))]
    );
    app.handle_answer(then_of(&effects, "room.leave"), Ok(json!({"left": true})));
    let keys: Vec<String> = app.conversations.iter().map(|c| c.key.label()).collect();
    assert_eq!(keys, vec!["bob"]);
    assert_eq!(app.selected().map(|c| c.key.label()), Some("bob".into()));
}

#[test]
fn create_and_join_select_the_room() {
    let mut app = connected();
    let effects = type_line(&mut app, "/create #Games --public");
    assert_eq!(
        calls(&effects),
        vec![("room.create", json!({"room": "games", "public": true}))]
    );
    let effects = app.handle_answer(then_of(&effects, "room.create"), Ok(json!({})));
    assert_eq!(app.selected().map(|c| c.key.label()), Some("#games".into()));
    assert!(
        app.notice
            .as_ref()
            .unwrap()
            .text
            .starts_with("created #games")
    );
    assert_eq!(
        calls(&effects),
        vec![
            ("history", json!({"room": "games", "limit": PAGE})),
            ("room.members", json!({"room": "games"})),
        ]
    );
    let effects = type_line(&mut app, "/join nope");
    app.handle_answer(
        then_of(&effects, "room.join"),
        Err("no invitation to nope".into()),
    );
    assert_eq!(app.notice.as_ref().unwrap().text, "no invitation to nope");
    assert!(app.notice.as_ref().unwrap().error);
}

#[test]
fn invitations_appear_and_must_be_joined_before_writing() {
    let mut app = connected();
    app.handle_event(&json!({"type": "invite", "room": "party", "from": "carol"}));
    assert_eq!(app.conversations[0].key, ConvKey::Room("party".into()));
    assert_eq!(app.conversations[0].room, Some(RoomState::Invited));
    assert_eq!(
        app.notice.as_ref().unwrap().text,
        "carol invited you to #party: /join party"
    );
    // The selection stayed on bob.
    assert_eq!(app.selected().map(|c| c.key.label()), Some("bob".into()));
    app.handle_key(key(KeyCode::BackTab));
    assert_eq!(app.selected().map(|c| c.key.label()), Some("#party".into()));
    let effects = type_line(&mut app, "hi");
    assert!(calls(&effects).is_empty());
    assert!(app.notice.as_ref().unwrap().text.contains("/join party"));
    app.handle_event(&json!({"type": "removed", "room": "party"}));
    assert_eq!(app.conversations[0].room, Some(RoomState::Removed));
}

#[test]
fn a_changed_key_is_said_at_once_and_the_conversation_read_again() {
    let mut app = connected();
    let effects = app.handle_event(&json!({
        "type": "key_changed", "name": "bob", "verified": true,
        "old_fingerprint": "1", "new_fingerprint": "2",
    }));
    let notice = app.notice.clone().unwrap();
    assert!(notice.error);
    assert!(
        notice.text.contains("bob's safety number changed"),
        "{}",
        notice.text
    );
    assert!(
        notice.text.contains("wait until you confirm"),
        "{}",
        notice.text
    );
    assert!(
        notice.text.contains("palaver verify bob"),
        "{}",
        notice.text
    );
    // bob's conversation is loaded again, with the notice the daemon filed in it.
    assert!(
        !app.conversations
            .iter()
            .find(|c| c.key == ConvKey::Direct("bob".into()))
            .unwrap()
            .loaded
    );
    assert!(
        calls(&effects)
            .iter()
            .any(|(method, _)| *method == "conversations")
    );
}

#[test]
fn presence_connections_and_the_rendezvous_come_from_events() {
    let mut app = connected();
    app.handle_answer(
        Then::Presence,
        Ok(json!([{"name": "bob", "state": "online", "last_seen": 1}])),
    );
    app.handle_answer(
        Then::Peers,
        Ok(json!([{"name": "bob", "peer_id": "12D3", "connection": "direct", "addr": null}])),
    );
    let (title, people) = app.people();
    assert_eq!(title, "Contacts");
    assert_eq!(
        people,
        vec![Person {
            name: "bob".into(),
            presence: Presence::Online,
            link: Some(Link::Direct),
            owner: false
        }]
    );
    app.handle_event(&json!({"type": "presence", "name": "bob", "state": "away", "last_seen": 2}));
    app.handle_event(
        &json!({"type": "connection", "peer_id": "12D3", "name": "bob", "connection": "relayed"}),
    );
    let (_, people) = app.people();
    assert_eq!(people[0].presence, Presence::Away);
    assert_eq!(people[0].link, Some(Link::Relayed));
    app.handle_event(&json!({"type": "connection", "peer_id": "12D3", "name": "bob", "connection": "disconnected"}));
    assert_eq!(app.people().1[0].link, None);

    app.handle_event(&json!({"type": "rendezvous", "connected": false, "logged_in": false}));
    assert!(!app.rendezvous.as_ref().unwrap().logged_in);
    // Back in: presence is read again.
    let effects =
        app.handle_event(&json!({"type": "rendezvous", "connected": true, "logged_in": true}));
    assert_eq!(calls(&effects), vec![("presence", json!({"names": []}))]);

    // In a room the pane lists its members (not me), owners marked.
    app.handle_key(key(KeyCode::Tab));
    app.handle_answer(
        Then::Members {
            room: "lunch".into(),
        },
        Ok(json!([
            {"name": "alice", "owner": true, "presence": "online"},
            {"name": "carol", "owner": false, "presence": "offline"},
            {"name": "bob", "owner": false, "presence": "unknown"},
        ])),
    );
    let (title, people) = app.people();
    assert_eq!(title, "Members");
    let names: Vec<(&str, Presence)> = people
        .iter()
        .map(|p| (p.name.as_str(), p.presence))
        .collect();
    assert_eq!(
        names,
        vec![("bob", Presence::Away), ("carol", Presence::Offline)]
    );
}

#[test]
fn the_input_line_edits_and_recalls() {
    let mut app = connected();
    for c in "héllo wörld".chars() {
        app.handle_key(key(KeyCode::Char(c)));
    }
    app.handle_key(key(KeyCode::Left));
    app.handle_key(key(KeyCode::Backspace));
    assert_eq!(app.input.text, "héllo wörd");
    app.handle_key(key(KeyCode::Home));
    app.handle_key(key(KeyCode::Delete));
    assert_eq!(app.input.text, "éllo wörd");
    app.handle_key(key(KeyCode::End));
    app.handle_key(ctrl('w'));
    assert_eq!(app.input.text, "éllo ");
    app.paste("a\nb");
    assert_eq!(app.input.text, "éllo a b");
    app.handle_key(ctrl('u'));
    assert!(app.input.text.is_empty());
    type_line(&mut app, "first");
    type_line(&mut app, "second");
    app.handle_key(key(KeyCode::Up));
    assert_eq!(app.input.text, "second");
    app.handle_key(key(KeyCode::Up));
    app.handle_key(key(KeyCode::Up));
    assert_eq!(app.input.text, "first");
    app.handle_key(key(KeyCode::Down));
    assert_eq!(app.input.text, "second");
    app.handle_key(key(KeyCode::Down));
    assert_eq!(app.input.text, "");
}

#[test]
fn help_verify_and_quit() {
    let mut app = connected();
    type_line(&mut app, "/help");
    assert!(app.overlay.as_ref().unwrap().lines[0].starts_with("/msg NAME TEXT"));
    app.handle_key(key(KeyCode::Esc));
    assert!(app.overlay.is_none());
    // /verify alone verifies the selected direct conversation.
    let effects = type_line(&mut app, "/verify");
    assert_eq!(calls(&effects), vec![("verify", json!({"name": "bob"}))]);
    app.handle_answer(
        Then::Verify,
        Ok(json!({"name": "bob", "safety_number": "00001 00002 00003 00004 00005 00006 00007 00008 00009 00010 00011 00012", "verified": false, "key_changed": false})),
    );
    let overlay = app.overlay.clone().unwrap();
    assert_eq!(overlay.title, "Safety number with bob");
    assert_eq!(overlay.lines[0], "00001 00002 00003 00004 00005 00006");
    assert_eq!(overlay.lines[1], "00007 00008 00009 00010 00011 00012");
    assert_eq!(overlay.lines[3], "bob is not verified.");
    assert!(
        overlay
            .lines
            .iter()
            .any(|l| l == "palaver verify bob --confirm")
    );
    // Typing closes the box and goes on into the input line.
    app.handle_key(key(KeyCode::Char('x')));
    assert!(app.overlay.is_none());
    assert_eq!(app.input.text, "x");
    app.handle_key(ctrl('u'));
    type_line(&mut app, "/quit");
    assert!(app.quit);

    let mut app = connected();
    app.handle_key(ctrl('c'));
    assert!(app.quit);
    assert_eq!(app.handle_key(ctrl('l')), vec![Effect::Redraw]);
}

#[test]
fn unknown_commands_and_bad_names_are_reported_not_sent() {
    let mut app = connected();
    let effects = type_line(&mut app, "/dance");
    assert!(effects.is_empty());
    assert!(
        app.notice
            .as_ref()
            .unwrap()
            .text
            .contains("unknown command /dance")
    );
    let effects = type_line(&mut app, "/msg alice hi");
    assert!(effects.is_empty());
    assert_eq!(app.notice.as_ref().unwrap().text, "that is you");
    let effects = type_line(&mut app, "   ");
    assert!(effects.is_empty());
}

#[test]
fn when_the_daemon_goes_away_q_quits_and_nothing_is_sent() {
    let mut app = connected();
    app.disconnected(true, "");
    assert_eq!(app.daemon, Daemon::NotRunning);
    assert!(app.rendezvous.is_none());
    assert!(app.handle_key(key(KeyCode::Char('h'))).is_empty());
    assert!(app.input.text.is_empty());
    app.handle_key(key(KeyCode::Char('q')));
    assert!(app.quit);
    // Back again: everything is read afresh, and merged with what is held.
    let mut app = connected();
    app.disconnected(false, "the daemon stopped");
    assert_eq!(app.daemon, Daemon::Lost("the daemon stopped".into()));
    let effects = app.connected();
    assert_eq!(calls(&effects).len(), 4);
    assert!(!app.conversations[0].loaded);
    assert!(app.conversations[0].messages.is_empty());
}

#[test]
fn control_characters_from_the_network_never_reach_the_terminal() {
    let mut app = connected();
    app.handle_event(&message_event("e1", "bob", "bob", "hi\u{1b}[2Jthere\tyou"));
    let text = &app.conversations[0].messages.back().unwrap().text;
    assert_eq!(text, "hi\u{fffd}[2Jthere you");
}

fn notifications(effects: &[Effect]) -> Vec<(String, String)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Notify { title, body } => Some((title.clone(), body.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn unread_counts_from_the_daemon_show_and_are_marked_read_when_viewed() {
    let mut app = App::new("/tmp/palaver.sock");
    app.connected();
    // Two messages came to #lunch while the window was closed.
    let effects = app.handle_answer(
        Then::Conversations,
        Ok(json!([
            {"conversation": "bob", "unread": 0, "first_unread": null},
            {"conversation": "#lunch", "unread": 2, "first_unread": "r1"},
        ])),
    );
    assert_eq!(
        calls(&effects),
        vec![("history", json!({"with": "bob", "limit": PAGE}))],
        "bob is selected and has nothing unread: nothing to mark"
    );
    assert_eq!(app.conversations[1].unread, 2);
    assert_eq!(app.conversations[1].marker.as_deref(), Some("r1"));
    // Viewing it tells the daemon; the "new messages" line stays while it is in view...
    let effects = app.handle_key(key(KeyCode::Tab));
    assert!(
        calls(&effects).contains(&("read", json!({"room": "lunch"}))),
        "{effects:?}"
    );
    assert_eq!(app.conversations[1].unread, 0);
    assert_eq!(app.conversations[1].marker.as_deref(), Some("r1"));
    // ... and is gone once another conversation is selected.
    app.handle_key(key(KeyCode::Tab));
    assert_eq!(app.conversations[1].marker, None);
}

#[test]
fn a_message_out_of_view_notifies_and_one_in_view_is_read_as_it_comes() {
    let mut app = connected();
    // In view (bob is selected): read at once, no notification.
    let effects = app.handle_event(&message_event("m3", "bob", "bob", "there?"));
    assert_eq!(
        calls(&effects),
        vec![("read", json!({"with": "bob", "up_to": "m3"}))]
    );
    assert!(notifications(&effects).is_empty());
    // Elsewhere: a notification, and the first of them is where the line goes.
    let effects = app.handle_event(&message_event("r1", "#lunch", "carol", "soup?"));
    assert_eq!(
        notifications(&effects),
        vec![("carol in #lunch".to_owned(), "soup?".to_owned())]
    );
    assert!(calls(&effects).is_empty());
    assert_eq!(app.conversations[1].marker.as_deref(), Some("r1"));
    // A burst rings once...
    let effects = app.handle_event(&message_event("r2", "#lunch", "bob", "yes"));
    assert!(notifications(&effects).is_empty());
    assert_eq!(app.conversations[1].unread, 2);
    assert_eq!(app.conversations[1].marker.as_deref(), Some("r1"));
    // ... and a message a while later rings again; a long one is cut.
    app.now += NOTIFY_GAP_MS;
    let long = "x".repeat(500);
    let effects = app.handle_event(&message_event("d1", "dave", "dave", &long));
    let notified = notifications(&effects);
    assert_eq!(notified.len(), 1);
    assert_eq!(notified[0].0, "dave");
    assert_eq!(notified[0].1.chars().count(), NOTIFY_TEXT + 1);
    // My own messages (sent from elsewhere) neither notify nor count.
    app.now += NOTIFY_GAP_MS;
    let effects = app.handle_event(&message_event("r3", "#lunch", "alice", "mine"));
    assert!(effects.is_empty(), "{effects:?}");
    assert_eq!(app.conversations[2].unread, 2);
    // Read in another window: the badge clears here too.
    app.handle_event(&json!({"type": "read", "conversation": "#lunch", "unread": 0}));
    assert_eq!(app.conversations[2].unread, 0);
    assert_eq!(app.conversations[2].marker, None);
}

#[test]
fn after_a_reconnect_the_daemons_counts_replace_the_windows() {
    let mut app = connected();
    app.handle_event(&message_event("r1", "#lunch", "bob", "soup?"));
    assert_eq!(app.conversations[1].unread, 1);
    // Read elsewhere while this window was cut off (the read event was lost with the link).
    app.connected();
    app.handle_answer(
        Then::Conversations,
        Ok(json!([
            {"conversation": "bob", "unread": 0, "first_unread": null},
            {"conversation": "#lunch", "unread": 0, "first_unread": null},
        ])),
    );
    assert_eq!(app.conversations[1].unread, 0);
    assert_eq!(app.conversations[1].marker, None);
}

#[test]
fn a_file_is_offered_here_and_one_offered_to_me_is_fetched_with_its_progress_shown() {
    let mut app = connected();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("menu.pdf");
    std::fs::write(&path, vec![7u8; 3000]).unwrap();
    let effects = type_line(&mut app, &format!("/file {}", path.display()));
    let sent = calls(&effects);
    assert_eq!(sent[0].0, "send_file");
    assert_eq!(sent[0].1["to"], "bob");
    assert_eq!(sent[0].1["path"], path.to_str().unwrap());
    let shown = app.selected().unwrap().messages.back().unwrap();
    assert_eq!(shown.text, "[file] menu.pdf (2.9 KiB)");
    assert_eq!(shown.status, Delivery::Sending);
    let missing = type_line(&mut app, "/file /no/such/file");
    assert!(missing.is_empty());
    assert!(app.notice.as_ref().unwrap().error);

    // Offered to me, over the auto-accept size: /get fetches it, the status line follows it.
    assert!(type_line(&mut app, "/get").is_empty(), "nothing waits yet");
    app.handle_event(
        &json!({"type": "file_offer", "id": "f1aa", "conversation": "bob",
        "from": "bob", "name": "film.mkv", "size": 4u64 << 30, "accepted": false}),
    );
    assert!(app.notice.as_ref().unwrap().text.contains("/get"));
    assert_eq!(files::waiting_file(&app).as_deref(), Some("f1aa"));
    let get = calls(&type_line(&mut app, "/get"));
    assert_eq!(get, [("file.accept", json!({"id": "f1aa"}))]);
    app.handle_event(
        &json!({"type": "file_progress", "id": "f1aa", "direction": "receiving",
        "bytes": 1u64 << 30, "size": 4u64 << 30}),
    );
    let line = &app.notice.as_ref().unwrap().text;
    assert!(line.contains("film.mkv") && line.contains("25%"), "{line}");
    app.handle_event(
        &json!({"type": "file_done", "id": "f1aa", "direction": "receiving",
        "path": "/home/alice/files/film.mkv"}),
    );
    assert!(
        app.notice
            .as_ref()
            .unwrap()
            .text
            .contains("/home/alice/files/film.mkv")
    );
    app.handle_event(&json!({"type": "file_failed", "id": "f2bb", "reason": "too big"}));
    assert!(app.notice.as_ref().unwrap().error);
}
