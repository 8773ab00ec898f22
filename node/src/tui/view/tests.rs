use ratatui::Terminal;
use ratatui::backend::TestBackend;
use serde_json::json;

use super::super::app::Then;
use super::*;
use crate::localtime::LocalTime;

/// Draws `app` on a `width`×`height` screen and reads it back, one string per row.
fn screen(app: &App, width: u16, height: u16) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
    terminal.draw(|frame| draw(frame, app)).unwrap();
    let buffer = terminal.backend().buffer();
    (0..height)
        .map(|y| {
            let mut row = String::new();
            let mut hidden = 0;
            for x in 0..width {
                let symbol = buffer[(x, y)].symbol();
                if hidden > 0 {
                    hidden -= 1;
                    continue;
                }
                hidden = symbol.width().saturating_sub(1);
                row.push_str(symbol);
            }
            row
        })
        .collect()
}

/// The conversation list's columns of a row.
fn left(row: &str) -> String {
    row.chars().take(18).collect()
}

fn contains(screen: &[String], text: &str) -> bool {
    screen.iter().any(|row| row.contains(text))
}

fn entry(id: &str, conversation: &str, from: &str, text: &str, status: &str) -> serde_json::Value {
    // 10:02 UTC.
    json!({"id": id, "conversation": conversation, "from": from, "text": text,
           "sent_at": 1_700_000_000_000u64 - 1_700_000_000_000u64 % 86_400_000 + 36_120_000,
           "status": status})
}

/// alice, talking with bob, with #lunch and carol in the list, at 80×24.
fn chatting() -> App {
    let mut app = App::new("/home/alice/.local/share/palaver/palaver.sock");
    app.local = LocalTime::new(jiff::tz::TimeZone::UTC);
    app.resize(
        message_viewport(Rect::new(0, 0, 80, 24)).0,
        message_viewport(Rect::new(0, 0, 80, 24)).1,
    );
    app.connected();
    app.handle_answer(
        Then::Status,
        Ok(json!({"name": "alice", "rendezvous": {"connected": true, "logged_in": true}})),
    );
    app.handle_answer(
        Then::Conversations,
        Ok(json!([{"conversation": "bob"}, {"conversation": "#lunch"}, {"conversation": "carol"}])),
    );
    app.handle_answer(
        Then::History {
            conv: ConvKey::Direct("bob".into()),
            older: false,
        },
        Ok(json!([
            entry("1", "bob", "bob", "Hi alice! Lunch today?", "received"),
            entry("2", "bob", "alice", "Sure, noon.", "delivered"),
            entry("3", "bob", "alice", "I'll bring the cards.", "queued"),
            entry("4", "bob", "alice", "On my way", "sent"),
            entry("5", "bob", "alice", "Are you there?", "failed"),
        ])),
    );
    app.handle_answer(
        Then::Presence,
        Ok(json!([{"name": "bob", "state": "online"}, {"name": "carol", "state": "away"}])),
    );
    app.handle_answer(
        Then::Peers,
        Ok(json!([{"name": "bob", "connection": "direct"}, {"name": "carol", "connection": "relayed"}])),
    );
    for (id, from) in [("l1", "bob"), ("l2", "carol"), ("l3", "bob")] {
        app.handle_event(
            &json!({"type": "message", "id": id, "conversation": "#lunch",
            "from": from, "text": "soup?", "sent_at": 1, "status": "received"}),
        );
    }
    app
}

#[test]
fn the_chat_window_at_80_by_24() {
    let app = chatting();
    let rows = screen(&app, 80, 24);
    let text = rows.join("\n");
    // Conversation list with unread counts.
    assert!(rows[0].contains("Conversations"), "{text}");
    assert!(rows[1].contains("▸● bob"), "{text}");
    assert!(
        left(&rows[2]).contains("#lunch") && left(&rows[2]).ends_with("3│"),
        "{text}"
    );
    assert!(rows[3].contains("◐ carol"), "{text}");
    // Messages, with sender, time and delivery marks.
    assert!(contains(&rows, "bob — online, direct"), "{text}");
    assert!(
        contains(&rows, "10:02 bob: Hi alice! Lunch today?"),
        "{text}"
    );
    assert!(contains(&rows, "10:02 alice: Sure, noon. ✓✓"), "{text}");
    assert!(contains(&rows, "alice: I'll bring the cards. ✉"), "{text}");
    assert!(contains(&rows, "alice: On my way ✓"), "{text}");
    assert!(contains(&rows, "alice: Are you there? ✗"), "{text}");
    // People with presence and how they are connected.
    assert!(contains(&rows, "Contacts"), "{text}");
    assert!(contains(&rows, "● bob     direct"), "{text}");
    assert!(contains(&rows, "◐ carol  relayed"), "{text}");
    // The input line and the status bar.
    assert!(rows[20].contains("to bob"), "{text}");
    assert!(rows[21].starts_with("│> "), "{text}");
    assert!(
        rows[23].starts_with(" alice  rendezvous: logged in │"),
        "{text}"
    );
    assert!(rows[23].contains("/help"), "{text}");
    // The newest message sits just above the bottom border of the pane.
    assert!(rows[18].contains("Are you there?"), "{text}");
}

#[test]
fn the_not_running_screen_says_how_to_start_the_daemon() {
    let mut app = App::new("/tmp/x/palaver.sock");
    app.disconnected(true, "");
    let rows = screen(&app, 80, 24);
    let text = rows.join("\n");
    assert!(
        contains(&rows, "The Palaver daemon is not running."),
        "{text}"
    );
    assert!(contains(&rows, "/tmp/x/palaver.sock"), "{text}");
    assert!(
        contains(&rows, "palaver daemon --rendezvous MULTIADDR"),
        "{text}"
    );
    assert!(contains(&rows, "palaver demo --interactive"), "{text}");
    assert!(contains(&rows, "q or Ctrl-C quits"), "{text}");

    app.disconnected(false, "the daemon stopped");
    let rows = screen(&app, 80, 24);
    assert!(contains(
        &rows,
        "Lost the connection to the daemon: the daemon stopped"
    ));
}

#[test]
fn the_status_bar_follows_the_rendezvous_and_shows_notices() {
    let mut app = chatting();
    app.handle_event(&json!({"type": "rendezvous", "connected": false, "logged_in": false}));
    assert!(screen(&app, 80, 24)[23].contains("rendezvous: not connected"));
    app.handle_event(&json!({"type": "rendezvous", "connected": true, "logged_in": false}));
    assert!(screen(&app, 80, 24)[23].contains("rendezvous: logging in…"));
    app.handle_event(&json!({"type": "invite", "room": "party", "from": "carol"}));
    let rows = screen(&app, 80, 24);
    assert!(
        rows[23].contains("carol invited you to #party: /join party"),
        "{rows:#?}"
    );
    assert!(contains(&rows, "+ #party"), "{rows:#?}");
}

#[test]
fn a_room_shows_its_members_and_their_messages() {
    let mut app = chatting();
    app.handle_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Tab,
    ));
    app.handle_answer(
        Then::Members {
            room: "lunch".into(),
        },
        Ok(json!([
            {"name": "alice", "owner": true, "presence": "online"},
            {"name": "bob", "owner": false, "presence": "online"},
            {"name": "carol", "owner": false, "presence": "unknown"},
        ])),
    );
    let rows = screen(&app, 80, 24);
    let text = rows.join("\n");
    assert!(contains(&rows, "#lunch — 3 members"), "{text}");
    assert!(contains(&rows, "Members"), "{text}");
    assert!(contains(&rows, "● bob     direct"), "{text}");
    assert!(contains(&rows, "◐ carol  relayed"), "{text}");
    assert!(contains(&rows, "carol: soup?"), "{text}");
    assert!(rows[20].contains("to #lunch"), "{text}");
    // Read now: no unread badge.
    assert!(
        left(&rows[2]).contains("#lunch") && !left(&rows[2]).contains('3'),
        "{text}"
    );
}

#[test]
fn a_public_room_says_so_and_notices_are_not_messages() {
    let mut app = chatting();
    app.handle_answer(
        Then::Rooms,
        Ok(json!([{"room": "lunch", "public": true, "state": "joined"}])),
    );
    app.handle_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Tab,
    ));
    let rows = screen(&app, 100, 24);
    let text = rows.join("\n");
    assert!(
        contains(
            &rows,
            "#lunch — public: anyone who knows the name can read it"
        ),
        "{text}"
    );
    // bob's conversation, with the daemon's own line in it.
    app.handle_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::BackTab,
    ));
    let mut notice = entry("6", "bob", "", "bob's safety number changed.", "received");
    notice["notice"] = true.into();
    app.handle_answer(
        Then::History {
            conv: ConvKey::Direct("bob".into()),
            older: false,
        },
        Ok(json!([
            entry("1", "bob", "bob", "Hi alice! Lunch today?", "received"),
            notice
        ])),
    );
    let rows = screen(&app, 100, 24);
    let text = rows.join("\n");
    assert!(contains(&rows, "-- bob's safety number changed."), "{text}");
    assert!(!contains(&rows, ": bob's safety number"), "{text}");
}

#[test]
fn long_messages_wrap_and_scrolling_shows_where_you_are() {
    let mut app = chatting();
    let long = "word ".repeat(40);
    for i in 0..30 {
        app.handle_event(
            &json!({"type": "message", "id": format!("w{i}"), "conversation": "bob",
            "from": "bob", "text": format!("{i} {long}"), "sent_at": 1, "status": "received"}),
        );
    }
    let rows = screen(&app, 80, 24);
    // Wrapped under the text, not under the time.
    assert!(
        rows.iter().any(|r| r.contains("│      word word")),
        "{rows:#?}"
    );
    app.handle_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::PageUp,
    ));
    let rows = screen(&app, 80, 24);
    assert!(contains(&rows, "more lines · PgDn"), "{rows:#?}");
}

#[test]
fn help_is_a_box_over_the_window() {
    let mut app = chatting();
    for c in "/help".chars() {
        app.handle_key(crossterm::event::KeyEvent::from(
            crossterm::event::KeyCode::Char(c),
        ));
    }
    app.handle_key(crossterm::event::KeyEvent::from(
        crossterm::event::KeyCode::Enter,
    ));
    let rows = screen(&app, 80, 24);
    let text = rows.join("\n");
    assert!(contains(&rows, "Help (Esc closes)"), "{text}");
    assert!(contains(&rows, "/msg NAME TEXT    write to NAME"), "{text}");
    assert!(contains(&rows, "✓✓ delivered"), "{text}");
}

#[test]
fn narrow_and_tiny_windows_still_draw() {
    let app = chatting();
    let rows = screen(&app, 60, 20);
    assert!(contains(&rows, "Conversations"));
    assert!(!contains(&rows, "Contacts"));
    let rows = screen(&app, 40, 12);
    assert!(!contains(&rows, "Conversations"));
    assert!(contains(&rows, "Are you there?"));
    // Degenerate sizes must not panic.
    for (w, h) in [(1, 1), (5, 3), (10, 5), (200, 60)] {
        screen(&app, w, h);
    }
    let mut down = App::new("/x");
    down.disconnected(true, "");
    screen(&down, 10, 4);
}

#[test]
fn wrap_breaks_at_spaces_and_splits_long_words() {
    assert_eq!(wrap("a bb ccc", 4), vec!["a bb", "ccc"]);
    assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
    assert_eq!(wrap("one\ntwo", 10), vec!["one", "two"]);
    assert_eq!(wrap("", 10), vec![""]);
    // Wide characters count two columns.
    assert_eq!(wrap("日本語です", 4), vec!["日本", "語で", "す"]);
}

/// 2026-12-01T12:00:00Z, a Tuesday.
const NOON: u64 = 1_796_126_400_000;
const HOUR: u64 = 3_600_000;

/// alice's window with bob's conversation selected: `unread` of `messages` (id, text, time)
/// arrived while it was closed, seen at NOON in time zone `tz`.
fn window_with(tz: &str, messages: &[(&str, &str, u64)], unread: usize) -> App {
    let mut app = App::new("/tmp/palaver.sock");
    app.local = LocalTime::new(jiff::tz::TimeZone::posix(tz).unwrap());
    app.now = NOON;
    app.resize(
        message_viewport(Rect::new(0, 0, 80, 24)).0,
        message_viewport(Rect::new(0, 0, 80, 24)).1,
    );
    app.connected();
    app.handle_answer(
        Then::Status,
        Ok(json!({"name": "alice", "rendezvous": {"connected": true, "logged_in": true}})),
    );
    let first_unread = messages[messages.len() - unread.max(1)].0;
    app.handle_answer(
        Then::Conversations,
        Ok(json!([{"conversation": "bob", "unread": unread,
                   "first_unread": (unread > 0).then_some(first_unread)}])),
    );
    let page: Vec<serde_json::Value> = messages
        .iter()
        .map(|(id, text, at)| {
            json!({"id": id, "conversation": "bob", "from": "bob", "text": text,
                   "sent_at": at, "status": "received"})
        })
        .collect();
    app.handle_answer(
        Then::History {
            conv: ConvKey::Direct("bob".into()),
            older: false,
        },
        Ok(json!(page)),
    );
    app
}

/// The message pane's rows, trimmed, without the empty ones.
fn pane(app: &App) -> Vec<String> {
    screen(app, 80, 24)[1..19]
        .iter()
        .map(|row| {
            row.chars()
                .skip(19)
                .take(42)
                .collect::<String>()
                .trim()
                .to_owned()
        })
        .filter(|row| !row.is_empty())
        .collect()
}

#[test]
fn days_are_headed_and_times_are_local() {
    let messages = [
        ("1", "late night", NOON - 12 * HOUR - 30 * 60_000),
        ("2", "early morning", NOON - 11 * HOUR - 30 * 60_000),
        ("3", "lunch?", NOON),
    ];
    let utc = window_with("UTC0", &messages, 0);
    let rows = pane(&utc);
    assert_eq!(rows.len(), 5, "{rows:#?}");
    assert!(rows[0].contains("─ Yesterday ─"), "{rows:#?}");
    assert!(rows[1].starts_with("23:30 bob: late night"), "{rows:#?}");
    assert!(rows[2].contains("─ Today ─"), "{rows:#?}");
    assert!(rows[3].starts_with("00:30 bob: early morning"), "{rows:#?}");
    assert!(rows[4].starts_with("12:00 bob: lunch?"), "{rows:#?}");
    // In New York the first two were both on Monday evening.
    let new_york = window_with("EST5EDT,M3.2.0,M11.1.0", &messages, 0);
    let rows = pane(&new_york);
    assert!(rows[0].contains("─ Yesterday ─"), "{rows:#?}");
    assert!(rows[1].starts_with("18:30 bob: late night"), "{rows:#?}");
    assert!(rows[2].starts_with("19:30 bob: early morning"), "{rows:#?}");
    assert!(rows[3].contains("─ Today ─"), "{rows:#?}");
    assert!(rows[4].starts_with("07:00 bob: lunch?"), "{rows:#?}");
    // Further back: the date.
    let old = window_with("UTC0", &[("1", "hello", NOON - 72 * HOUR)], 0);
    assert!(
        pane(&old)[0].contains("─ Sat 28 Nov 2026 ─"),
        "{:#?}",
        pane(&old)
    );
}

#[test]
fn a_line_divides_what_was_read_from_what_came_while_away() {
    let messages = [
        ("1", "seen before", NOON - 2 * HOUR),
        ("2", "while away", NOON - HOUR),
        ("3", "also away", NOON),
    ];
    let app = window_with("UTC0", &messages, 2);
    let rows = pane(&app);
    let line = rows
        .iter()
        .position(|row| row.contains("─ new messages ─"))
        .unwrap_or_else(|| panic!("no read marker in {rows:#?}"));
    assert!(rows[line - 1].contains("seen before"), "{rows:#?}");
    assert!(rows[line + 1].contains("while away"), "{rows:#?}");
    // Scrolling counts the separators: the whole conversation is exactly this tall.
    assert_eq!(app.total_lines(), rows.len());
    // Nothing unread: no line.
    let read = window_with("UTC0", &messages, 0);
    assert!(!pane(&read).iter().any(|row| row.contains("new messages")));
}
