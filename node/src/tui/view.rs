//! Drawing the model: conversations on the left, messages in the middle, people on the right,
//! the input line and a status bar at the bottom. A pure function of [`App`] and the frame size,
//! so tests render into ratatui's `TestBackend` and read the screen back as text.

use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Padding, Paragraph, Wrap};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use super::app::{
    App, ConvKey, Conversation, Daemon, Delivery, Link, Message, Presence, RoomState,
};
use crate::localtime::LocalTime;

/// Columns of a message line taken by the time (`HH:MM `).
const TIME_WIDTH: usize = 6;
/// The side panes' width, borders included.
const SIDE_WIDTH: u16 = 18;

/// Where each part of the window goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Areas {
    pub(crate) conversations: Option<Rect>,
    pub(crate) messages: Rect,
    pub(crate) people: Option<Rect>,
    /// Everything above the input line (where overlays go).
    pub(crate) main: Rect,
    pub(crate) input: Rect,
    pub(crate) status: Rect,
}

/// The layout for a window of `area`: narrow windows drop the people pane, then the list.
pub(crate) fn layout(area: Rect) -> Areas {
    let [main, input, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(area);
    let (left, right) = match area.width {
        w if w >= 3 * SIDE_WIDTH + 20 => (SIDE_WIDTH, SIDE_WIDTH),
        w if w >= SIDE_WIDTH + 30 => (SIDE_WIDTH, 0),
        _ => (0, 0),
    };
    let [conversations, messages, people] = Layout::horizontal([
        Constraint::Length(left),
        Constraint::Min(1),
        Constraint::Length(right),
    ])
    .areas(main);
    Areas {
        conversations: (left > 0).then_some(conversations),
        messages,
        people: (right > 0).then_some(people),
        main,
        input,
        status,
    }
}

/// The inside of the message pane (width, height) for a window of `area`.
pub(crate) fn message_viewport(area: Rect) -> (u16, u16) {
    let messages = layout(area).messages;
    (
        messages.width.saturating_sub(2),
        messages.height.saturating_sub(2),
    )
}

pub(crate) fn draw(frame: &mut Frame<'_>, app: &App) {
    let area = frame.area();
    match &app.daemon {
        Daemon::NotRunning => return not_running(frame, area, app, None),
        Daemon::Lost(reason) => return not_running(frame, area, app, Some(reason)),
        Daemon::Connecting | Daemon::Up => {}
    }
    let areas = layout(area);
    if let Some(list) = areas.conversations {
        conversations(frame, list, app);
    }
    messages(frame, areas.messages, app);
    if let Some(people_area) = areas.people {
        people(frame, people_area, app);
    }
    input(frame, areas.input, app);
    status(frame, areas.status, app);
    if let Some(overlay) = &app.overlay {
        let width = overlay
            .lines
            .iter()
            .map(|l| l.width())
            .max()
            .unwrap_or(0)
            .max(overlay.title.width())
            + 4;
        let box_area = centered(areas.main, width as u16, overlay.lines.len() as u16 + 2);
        frame.render_widget(Clear, box_area);
        let lines: Vec<Line<'_>> = overlay
            .lines
            .iter()
            .map(|l| Line::from(format!(" {l}")))
            .collect();
        frame.render_widget(
            Paragraph::new(lines).block(
                Block::bordered()
                    .title(format!(" {} ", overlay.title))
                    .border_style(Style::new().fg(Color::Cyan)),
            ),
            box_area,
        );
    }
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect::new(
        area.x + (area.width - width) / 2,
        area.y + (area.height - height) / 2,
        width,
        height,
    )
}

fn not_running(frame: &mut Frame<'_>, area: Rect, app: &App, lost: Option<&String>) {
    let headline = match lost {
        None => "The Palaver daemon is not running.".to_owned(),
        Some(reason) => format!("Lost the connection to the daemon: {reason}"),
    };
    let lines = vec![
        Line::from(headline).bold(),
        Line::from(format!("(no answer on {})", app.socket)).dim(),
        Line::from(""),
        Line::from("Start it in another terminal, with the same --home:"),
        Line::from("    palaver daemon --rendezvous MULTIADDR").fg(Color::Cyan),
        Line::from("or try Palaver with nothing else running:"),
        Line::from("    palaver demo --interactive").fg(Color::Cyan),
        Line::from(""),
        Line::from("This window connects by itself once the daemon is up."),
        Line::from("q or Ctrl-C quits.").dim(),
    ];
    let box_area = centered(area, area.width.min(76), lines.len() as u16 + 4);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::bordered()
                .title(" palaver chat ")
                .padding(Padding::uniform(1)),
        ),
        box_area,
    );
}

fn presence_glyph(presence: Presence) -> Span<'static> {
    match presence {
        Presence::Online => "●".fg(Color::Green),
        Presence::Away => "◐".fg(Color::Yellow),
        Presence::Offline => "○".fg(Color::DarkGray),
        Presence::Unknown => "·".fg(Color::DarkGray),
    }
}

fn presence_word(presence: Presence) -> &'static str {
    match presence {
        Presence::Online => "online",
        Presence::Away => "away",
        Presence::Offline => "offline",
        Presence::Unknown => "presence unknown",
    }
}

fn link_word(link: Link) -> &'static str {
    match link {
        Link::Direct => "direct",
        Link::Relayed => "relayed",
    }
}

fn conversations(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let block = Block::bordered().title(" Conversations ");
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let rows = usize::from(inner.height);
    let width = usize::from(inner.width);
    if rows == 0 || width < 4 {
        return;
    }
    let offset = app.selected.saturating_sub(rows - 1);
    let lines: Vec<Line<'_>> = app
        .conversations
        .iter()
        .enumerate()
        .skip(offset)
        .take(rows)
        .map(|(at, conv)| conversation_row(app, conv, at == app.selected, width))
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn conversation_row(app: &App, conv: &Conversation, selected: bool, width: usize) -> Line<'static> {
    let (badge, badge_style) = match conv.room {
        _ if conv.unread > 0 => (
            conv.unread.min(999).to_string(),
            Style::new().fg(Color::Black).bg(Color::Yellow).bold(),
        ),
        _ => (String::new(), Style::new()),
    };
    let glyph = match &conv.key {
        ConvKey::Direct(name) => {
            presence_glyph(app.presence.get(name).copied().unwrap_or(Presence::Unknown))
        }
        // Rooms: `+` invited (not joined yet), `×` removed.
        ConvKey::Room(_) => match conv.room {
            Some(RoomState::Invited) => "+".fg(Color::Yellow).bold(),
            Some(RoomState::Removed) => "×".fg(Color::DarkGray),
            _ => Span::raw(" "),
        },
    };
    let room = width.saturating_sub(3 + badge.width() + usize::from(!badge.is_empty()));
    let name = fit(&conv.key.label(), room);
    let pad = width.saturating_sub(3 + name.width() + badge.width());
    let mut name_style = Style::new();
    if conv.unread > 0 {
        name_style = name_style.bold();
    }
    if selected {
        name_style = name_style.add_modifier(Modifier::REVERSED | Modifier::BOLD);
    }
    let marker = if selected {
        "▸".fg(Color::Cyan)
    } else {
        Span::raw(" ")
    };
    Line::from(vec![
        marker,
        glyph,
        Span::raw(" "),
        Span::styled(name, name_style),
        Span::raw(" ".repeat(pad)),
        Span::styled(badge, badge_style),
    ])
}

fn messages(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let Some(conv) = app.selected() else {
        let block = Block::bordered().title(" Palaver ");
        let welcome = vec![
            Line::from("No conversations yet.").bold(),
            Line::from(""),
            Line::from("/msg NAME TEXT   write to someone"),
            Line::from("/join ROOM       accept an invitation"),
            Line::from("/create ROOM     start a room"),
            Line::from("/help            everything else"),
        ];
        frame.render_widget(
            Paragraph::new(welcome)
                .wrap(Wrap { trim: false })
                .block(block),
            area,
        );
        return;
    };
    let me = app.me.as_deref().unwrap_or("me");
    let mut title = vec![Span::raw(" "), conv.key.label().bold()];
    match (&conv.key, conv.room) {
        (_, Some(RoomState::Invited)) => title.push(" — invited, /join to enter".fg(Color::Yellow)),
        (_, Some(RoomState::Removed)) => title.push(" — you were removed".fg(Color::DarkGray)),
        (ConvKey::Room(room), _) => {
            if conv.public {
                title.push(" — public: anyone who knows the name can read it".fg(Color::Yellow));
            } else if let Some(members) = app.members.get(room) {
                title.push(format!(" — {} members", members.len()).dim());
            }
        }
        (ConvKey::Direct(name), _) => {
            let presence = app.presence.get(name).copied().unwrap_or(Presence::Unknown);
            let mut words = presence_word(presence).to_owned();
            if let Some(link) = app.links.get(name) {
                words = format!("{words}, {}", link_word(*link));
            }
            title.push(format!(" — {words}").dim());
        }
    }
    title.push(Span::raw(" "));
    let mut block = Block::bordered().title(Line::from(title));
    let inner = block.inner(area);
    let width = usize::from(inner.width);
    let height = usize::from(inner.height);

    let mut lines: Vec<Line<'static>> = Vec::new();
    if conv.messages.is_empty() {
        let text = if conv.loaded || conv.room == Some(RoomState::Invited) {
            "No messages yet."
        } else {
            "Loading…"
        };
        lines.push(Line::from(text).dim());
    }
    // Bottom up, only as far as the screen and the scroll offset reach.
    for at in (0..conv.messages.len()).rev() {
        if lines.len() >= height + conv.scroll {
            break;
        }
        let mut rows = block_lines(app, conv, at, width, me);
        rows.reverse();
        lines.extend(rows);
    }
    lines.reverse();
    let scroll = conv.scroll.min(lines.len().saturating_sub(height));
    let end = lines.len() - scroll;
    let start = end.saturating_sub(height);
    let mut shown: Vec<Line<'static>> = lines.drain(start..end).collect();
    if shown.len() < height {
        // Chat reads from the bottom: pad above.
        let mut padded = vec![Line::from(""); height - shown.len()];
        padded.append(&mut shown);
        shown = padded;
    }
    if conv.loading && conv.loaded {
        block = block.title_top(Line::from(" loading older… ".dim()).alignment(Alignment::Right));
    } else if scroll > 0 && start == 0 && conv.at_start {
        block = block.title_top(Line::from(" beginning ".dim()).alignment(Alignment::Right));
    }
    if scroll > 0 {
        block = block.title_bottom(
            Line::from(format!(" ↓ {scroll} more lines · PgDn ").fg(Color::Yellow))
                .alignment(Alignment::Right),
        );
    }
    frame.render_widget(Paragraph::new(shown).block(block), area);
}

/// What goes above message `at` of `conv`: the day's heading when its (local) day differs from
/// the message before it, and whether the "new messages" line does (it is the first unread).
fn separators(app: &App, conv: &Conversation, at: usize) -> (Option<String>, bool) {
    let Some(message) = conv.messages.get(at) else {
        return (None, false);
    };
    let day = app.local.day(message.sent_at);
    let before = at
        .checked_sub(1)
        .and_then(|before| conv.messages.get(before))
        .and_then(|before| app.local.day(before.sent_at));
    let heading = day
        .filter(|day| Some(*day) != before)
        .map(|day| app.local.day_label(day, app.now));
    let first_unread = conv.marker.is_some() && message.id == conv.marker;
    (heading, first_unread)
}

/// `── text ──` across `width` columns.
fn rule(text: &str, width: usize) -> String {
    let text = fit(text, width.saturating_sub(4));
    let side = width.saturating_sub(text.width() + 2);
    let left = side / 2;
    format!("{} {text} {}", "─".repeat(left), "─".repeat(side - left))
}

/// The rows message `at` of `conv` takes at `width`, separators above it included.
fn block_lines(
    app: &App,
    conv: &Conversation,
    at: usize,
    width: usize,
    me: &str,
) -> Vec<Line<'static>> {
    let (heading, first_unread) = separators(app, conv, at);
    let mut lines = Vec::new();
    if let Some(heading) = heading {
        lines.push(Line::from(rule(&heading, width)).fg(Color::DarkGray));
    }
    if first_unread {
        lines.push(Line::from(rule("new messages", width)).fg(Color::LightRed));
    }
    if let Some(message) = conv.messages.get(at) {
        lines.extend(message_lines(message, width, me, &app.local));
    }
    lines
}

/// How many rows message `at` of `conv` takes at `width`, separators included (what scrolling
/// counts in).
pub(crate) fn block_height(app: &App, conv: &Conversation, at: usize, width: usize) -> usize {
    let me = app.me.as_deref().unwrap_or("me");
    let (heading, first_unread) = separators(app, conv, at);
    let rows = conv.messages.get(at).map_or(0, |message| {
        message_rows(message, width, me, &app.local).len()
    });
    usize::from(heading.is_some()) + usize::from(first_unread) + rows
}

/// The rows a message takes at `width`: `HH:MM from: text mark` (local time), wrapped under the
/// text.
fn message_rows(message: &Message, width: usize, me: &str, local: &LocalTime) -> Vec<String> {
    let mut body = if message.is_notice() {
        format!("-- {}", message.text)
    } else {
        format!("{}: {}", message.from, message.text)
    };
    if message.from == me {
        let mark = message.status.mark();
        if !mark.is_empty() {
            body.push(' ');
            body.push_str(mark);
        }
    }
    let time = local.clock(message.sent_at);
    wrap(&body, width.saturating_sub(TIME_WIDTH).max(1))
        .into_iter()
        .enumerate()
        .map(|(i, row)| {
            if i == 0 {
                format!("{time:<TIME_WIDTH$}{row}")
            } else {
                format!("{:TIME_WIDTH$}{row}", "")
            }
        })
        .collect()
}

fn name_color(name: &str, me: &str) -> Color {
    if name == me {
        return Color::Cyan;
    }
    const PALETTE: [Color; 5] = [
        Color::Yellow,
        Color::Magenta,
        Color::Green,
        Color::LightBlue,
        Color::LightRed,
    ];
    let hash = name.bytes().fold(0usize, |h, b| {
        h.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    PALETTE[hash % PALETTE.len()]
}

fn mark_color(status: Delivery) -> Color {
    match status {
        Delivery::Sending | Delivery::Sent => Color::DarkGray,
        Delivery::Delivered | Delivery::Received => Color::Green,
        Delivery::Queued => Color::Yellow,
        Delivery::Failed => Color::Red,
    }
}

/// The rows of [`message_rows`], styled: dim time, coloured sender, coloured mark.
fn message_lines(
    message: &Message,
    width: usize,
    me: &str,
    local: &LocalTime,
) -> Vec<Line<'static>> {
    let rows = message_rows(message, width, me, local);
    let last = rows.len().saturating_sub(1);
    let mark = if message.from == me {
        message.status.mark()
    } else {
        ""
    };
    let sender = format!("{}:", message.from);
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            let mut spans = Vec::new();
            let (head, mut rest) = row.split_at(row.len().min(TIME_WIDTH));
            if i == 0 {
                spans.push(Span::styled(
                    head.to_owned(),
                    Style::new().fg(Color::DarkGray),
                ));
                if let Some(after) = rest.strip_prefix(sender.as_str()) {
                    spans.push(Span::styled(
                        sender.clone(),
                        Style::new().fg(name_color(&message.from, me)).bold(),
                    ));
                    rest = after;
                }
            } else {
                spans.push(Span::raw(head.to_owned()));
            }
            if message.is_notice() {
                spans.push(Span::styled(
                    rest.to_owned(),
                    Style::new().fg(Color::Yellow).italic(),
                ));
                return Line::from(spans);
            }
            match rest.strip_suffix(mark) {
                Some(text) if i == last && !mark.is_empty() => {
                    spans.push(Span::raw(text.to_owned()));
                    spans.push(Span::styled(
                        mark.to_owned(),
                        Style::new().fg(mark_color(message.status)),
                    ));
                }
                _ => spans.push(Span::raw(rest.to_owned())),
            }
            Line::from(spans)
        })
        .collect()
}

/// Wraps `text` to `width` columns at spaces, breaking words longer than a line.
pub(crate) fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut rows = Vec::new();
    for paragraph in text.split('\n') {
        let mut row = String::new();
        let mut used = 0;
        for word in paragraph.split(' ') {
            let word_width = word.width();
            let gap = usize::from(used > 0);
            if used + gap + word_width <= width {
                if gap == 1 {
                    row.push(' ');
                }
                row.push_str(word);
                used += gap + word_width;
                continue;
            }
            if used > 0 {
                rows.push(std::mem::take(&mut row));
                used = 0;
            }
            if word_width <= width {
                row.push_str(word);
                used = word_width;
                continue;
            }
            for c in word.chars() {
                let w = c.width().unwrap_or(0);
                if used + w > width && used > 0 {
                    rows.push(std::mem::take(&mut row));
                    used = 0;
                }
                row.push(c);
                used += w;
            }
        }
        rows.push(row);
    }
    rows
}

/// `text` cut to `width` columns, with `…` when cut.
fn fit(text: &str, width: usize) -> String {
    if text.width() <= width {
        return text.to_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    if width > 0 {
        out.push('…');
    }
    out
}

fn people(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let (title, people) = app.people();
    let block = Block::bordered().title(format!(" {title} "));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = usize::from(inner.width);
    if width < 4 {
        return;
    }
    let mut lines: Vec<Line<'_>> = people
        .iter()
        .take(usize::from(inner.height))
        .map(|person| {
            let link = person.link.map(link_word).unwrap_or("");
            let owner = if person.owner { "@" } else { "" };
            let room = width.saturating_sub(2 + link.width() + usize::from(!link.is_empty()));
            let name = fit(&format!("{owner}{}", person.name), room);
            let pad = width.saturating_sub(2 + name.width() + link.width());
            let mut name_style = Style::new();
            if person.presence == Presence::Offline || person.presence == Presence::Unknown {
                name_style = name_style.fg(Color::DarkGray);
            }
            Line::from(vec![
                presence_glyph(person.presence),
                Span::raw(" "),
                Span::styled(name, name_style),
                Span::raw(" ".repeat(pad)),
                Span::styled(link.to_owned(), Style::new().fg(Color::DarkGray)),
            ])
        })
        .collect();
    if lines.is_empty() {
        lines.push(Line::from("nobody yet").dim());
    }
    frame.render_widget(Paragraph::new(lines), inner);
}

fn input(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let title = match app.selected() {
        Some(conv) if matches!(conv.room, Some(RoomState::Invited | RoomState::Removed)) => {
            " commands: /help ".to_owned()
        }
        Some(conv) => format!(" to {} ", conv.key.label()),
        None => " /msg NAME TEXT to start · /help ".to_owned(),
    };
    let block = Block::bordered().title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let width = usize::from(inner.width);
    if width < 3 || inner.height == 0 {
        return;
    }
    // Scroll the line sideways so the cursor stays in view.
    let text = &app.input.text;
    let cursor_col = text[..app.input.cursor].width();
    let room = width - 2;
    let mut skip_cols = cursor_col.saturating_sub(room.saturating_sub(1));
    let mut start = 0;
    for (at, c) in text.char_indices() {
        if skip_cols == 0 {
            break;
        }
        let w = c.width().unwrap_or(0);
        skip_cols = skip_cols.saturating_sub(w);
        start = at + c.len_utf8();
    }
    let visible = fit_exact(&text[start..], room);
    frame.render_widget(
        Paragraph::new(Line::from(vec!["> ".fg(Color::Cyan), Span::raw(visible)])),
        inner,
    );
    if app.overlay.is_none() {
        let col = text[start..app.input.cursor].width();
        let x = inner.x + 2 + (col.min(room) as u16);
        frame.set_cursor_position(Position::new(x, inner.y));
    }
}

/// `text` cut to at most `width` columns (no ellipsis: the input line scrolls instead).
fn fit_exact(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out
}

fn status(frame: &mut Frame<'_>, area: Rect, app: &App) {
    let mut spans = vec![Span::styled(
        format!(" {} ", app.me.as_deref().unwrap_or("…")),
        Style::new().fg(Color::Black).bg(Color::Cyan).bold(),
    )];
    let (text, color) = match (&app.daemon, &app.rendezvous) {
        (Daemon::Connecting, _) | (_, None) => {
            ("connecting to the daemon…".to_owned(), Color::Yellow)
        }
        (_, Some(r)) if r.logged_in => ("rendezvous: logged in".to_owned(), Color::Green),
        (_, Some(r)) if r.connected => ("rendezvous: logging in…".to_owned(), Color::Yellow),
        (_, Some(r)) => match &r.error {
            Some(error) => (format!("rendezvous: refused ({error})"), Color::Red),
            None => ("rendezvous: not connected".to_owned(), Color::Red),
        },
    };
    spans.push(Span::styled(format!(" {text} "), Style::new().fg(color)));
    spans.push(Span::raw("│ "));
    match &app.notice {
        Some(notice) if notice.error => spans.push(Span::styled(
            notice.text.clone(),
            Style::new().fg(Color::Red),
        )),
        Some(notice) => spans.push(Span::raw(notice.text.clone())),
        None => spans.push(Span::styled(
            "Tab: next · PgUp: history · /help · Ctrl-C: quit",
            Style::new().fg(Color::DarkGray),
        )),
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

#[cfg(test)]
mod tests;
