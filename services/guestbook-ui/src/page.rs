//! The Guestbook page, rendered on the server as one HTML string.
//!
//! No template engine and no JavaScript: `format!` plus [`escape`] on every
//! piece of text that came from a user or a backend. Escaping is what stops a
//! guest from signing with `<script>...</script>` and running code in every
//! other visitor's browser (stored XSS).
//!
//! `VERSION=v2` switches to the green theme and badge, so a canary rollout is
//! visible from across the room, as in the talk's demo.

use std::fmt::Write;

use crate::backends::{BackendError, Greeting, Message};

/// Everything one page shows.
pub struct Page<'a> {
    /// This instance's version and hostname, for the footer.
    pub version: &'a str,
    pub hostname: &'a str,
    /// The name the greeting is for (from the `name` cookie).
    pub name: &'a str,
    pub greeting: &'a Result<Greeting, BackendError>,
    pub messages: &'a Result<Vec<Message>, BackendError>,
    /// Why the last post failed (the `error` query parameter), if it did.
    pub post_error: Option<&'a str>,
}

/// Escape text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Page<'_> {
    pub fn render(&self) -> String {
        let theme = if self.version == "v2" {
            "theme-v2"
        } else {
            "theme-v1"
        };
        let version = escape(self.version);
        let hostname = escape(self.hostname);

        let mut main = String::new();
        if let Some(error) = self.post_error {
            let _ = write!(
                main,
                r#"<div class="problem"><strong>Your message was not saved.</strong> {}</div>"#,
                escape(error)
            );
        }
        main.push_str(&self.greeting_section());
        main.push_str(&self.form_section());
        main.push_str(&self.messages_section());

        format!(
            r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Guestbook ({version})</title>
<style>{STYLE}</style>
</head>
<body class="{theme}">
<header><h1>Guestbook</h1><span class="badge" title="guestbook-ui version">{version}</span></header>
<main>
{main}
</main>
<footer>guestbook-ui <strong>{version}</strong> on <strong>{hostname}</strong></footer>
</body>
</html>
"#
        )
    }

    fn greeting_section(&self) -> String {
        match self.greeting {
            Ok(g) => format!(
                r#"<section class="greeting"><p class="hello">{}</p><p class="from">from helloworld-service <strong>{}</strong> on <strong>{}</strong></p></section>"#,
                escape(&g.greeting),
                escape(&g.version),
                escape(&g.hostname),
            ),
            Err(e) => format!(
                r#"<section class="greeting"><div class="problem"><strong>No greeting for {}.</strong> {}</div></section>"#,
                escape(self.name),
                escape(&e.to_string()),
            ),
        }
    }

    fn form_section(&self) -> String {
        format!(
            r#"<form method="post" action="/greet">
<label>Name <input name="name" value="{}" maxlength="64" required></label>
<label>Message <textarea name="message" rows="3" maxlength="500" required></textarea></label>
<button type="submit">Sign the guestbook</button>
</form>"#,
            escape(self.name)
        )
    }

    fn messages_section(&self) -> String {
        let messages = match self.messages {
            Err(e) => {
                return format!(
                    r#"<section><h2>Messages</h2><div class="problem"><strong>No messages.</strong> {}</div></section>"#,
                    escape(&e.to_string())
                );
            }
            Ok(messages) if messages.is_empty() => {
                return r#"<section><h2>Messages</h2><p class="empty">No messages yet: be the first to sign.</p></section>"#
                    .to_string();
            }
            Ok(messages) => messages,
        };
        let mut out = String::from(r#"<section><h2>Messages</h2><ul class="messages">"#);
        for m in messages {
            let _ = write!(
                out,
                r#"<li>{} <strong>{}</strong>: {} <time>{}</time></li>"#,
                sentiment_tag(&m.sentiment),
                escape(&m.name),
                escape(&m.message),
                escape(&short_time(&m.timestamp)),
            );
        }
        out.push_str("</ul></section>");
        out
    }
}

/// A coloured tag with an emoji, so the sentiment reads at a glance.
fn sentiment_tag(sentiment: &str) -> String {
    let (class, emoji, title) = match sentiment {
        "positive" => ("positive", "😀", "sentiment-service: positive"),
        "neutral" => ("neutral", "😐", "sentiment-service: neutral"),
        "negative" => ("negative", "😞", "sentiment-service: negative"),
        "unknown" => (
            "unknown",
            "❔",
            "sentiment-service could not be asked when this was stored",
        ),
        _ => ("unknown", "❔", "a sentiment this page does not know"),
    };
    format!(
        r#"<span class="tag {class}" title="{title}">{emoji} {}</span>"#,
        escape(sentiment)
    )
}

/// `2026-01-31T09:30:00.123Z` -> `2026-01-31 09:30 UTC`; anything else as it is.
fn short_time(timestamp: &str) -> String {
    match (timestamp.get(..10), timestamp.get(11..16)) {
        (Some(date), Some(time)) if timestamp.ends_with('Z') => format!("{date} {time} UTC"),
        _ => timestamp.to_string(),
    }
}

/// Big type and strong contrast: this page is read on a projector.
const STYLE: &str = r#"
:root { --accent: #1565c0; --page: #f4f7fb; }
body.theme-v2 { --accent: #2e7d32; --page: #e8f5e9; }
* { box-sizing: border-box; }
body { margin: 0; font: 22px/1.45 system-ui, sans-serif; background: var(--page); color: #1b1b1b; }
header { background: var(--accent); color: #fff; padding: 0.6em 1em; display: flex; align-items: center; gap: 0.8em; }
header h1 { margin: 0; font-size: 1.8em; }
.badge { background: #fff; color: var(--accent); font-weight: 700; border-radius: 0.4em; padding: 0.1em 0.5em; }
main { max-width: 960px; margin: 0 auto; padding: 1em; }
.greeting .hello { font-size: 2.2em; font-weight: 700; margin: 0.2em 0 0; color: var(--accent); }
.greeting .from { margin: 0 0 0.8em; color: #444; }
form { display: grid; gap: 0.6em; background: #fff; padding: 1em; border-radius: 0.5em; border: 1px solid #ccd; }
label { display: grid; gap: 0.2em; font-weight: 600; }
input, textarea, button { font: inherit; padding: 0.4em; }
button { background: var(--accent); color: #fff; border: 0; border-radius: 0.4em; cursor: pointer; justify-self: start; padding: 0.4em 1em; }
.messages { list-style: none; padding: 0; }
.messages li { background: #fff; margin: 0.4em 0; padding: 0.5em 0.8em; border-radius: 0.5em; border: 1px solid #dde; overflow-wrap: anywhere; }
time { color: #666; font-size: 0.75em; margin-left: 0.5em; }
.tag { display: inline-block; border-radius: 1em; padding: 0 0.6em; font-size: 0.8em; font-weight: 600; }
.tag.positive { background: #c8e6c9; color: #1b5e20; }
.tag.neutral { background: #e0e0e0; color: #333; }
.tag.negative { background: #ffcdd2; color: #b71c1c; }
.tag.unknown { background: #fff3cd; color: #7a5a00; border: 1px dashed #b58900; }
.problem { background: #fdecea; border-left: 6px solid #c62828; color: #7f1d1d; padding: 0.6em 0.9em; margin: 0.6em 0; border-radius: 0.3em; }
.empty { color: #555; }
footer { text-align: center; color: #333; padding: 1em; border-top: 3px solid var(--accent); margin-top: 1em; }
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_covers_markup_and_quotes() {
        assert_eq!(
            escape(r#"<a href="x" title='y'>&</a>"#),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;"
        );
    }

    #[test]
    fn short_time_formats_rfc3339_only() {
        assert_eq!(
            short_time("2026-01-31T09:30:00.123Z"),
            "2026-01-31 09:30 UTC"
        );
        assert_eq!(short_time("yesterday"), "yesterday");
    }

    #[test]
    fn unknown_sentiment_values_are_escaped() {
        let tag = sentiment_tag("<b>");
        assert!(tag.contains("&lt;b&gt;") && !tag.contains("<b>"), "{tag}");
    }
}
