//! The docs rendered from the declared list of settings
//! ([`super::list::SETTINGS`]): `.env.example`, the README's settings
//! table, and what `rate-limiter settings` prints.

use super::list::{Kind, Mirrors, GROUPS, SETTINGS};

/// Markdown made plain for a comment: no backticks, no escaped pipes.
fn plain(text: &str) -> String {
    text.replace('`', "").replace("\\|", "|")
}

/// `text` wrapped at 78 columns as `# ` comment lines.
fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 78 && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// `.env.example`: every setting with its default, grouped, each under its
/// description.
pub fn env_example() -> String {
    let mut out = String::from(
        "# Copy to .env and edit: the service (and start.sh) read .env when it exists.\n\
         # Every setting is listed with its default; an empty value means \"default\".\n\
         # A bad value stops the start with one line naming the setting.\n\
         # Generated from src/config/list.rs; tests/docs.rs keeps this file equal to it.\n",
    );
    for group in GROUPS {
        out.push_str(&format!("\n# --- {} ---\n", group.title()));
        for setting in SETTINGS.iter().filter(|s| s.group == group) {
            let mut text = plain(setting.doc);
            if let Kind::Choice(words) = setting.kind {
                text.push_str(&format!(" One of: {}.", words.join(", ")));
            }
            out.push_str(&comment(&text));
            out.push_str(&format!("{}={}\n", setting.name, setting.default));
        }
    }
    out
}

/// The README's settings table: one row per setting.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| Setting | Type | Default | envoyproxy/ratelimit | Meaning |\n|---|---|---|---|---|\n",
    );
    for group in GROUPS {
        out.push_str(&format!("| **{}** | | | | |\n", group.title()));
        for setting in SETTINGS.iter().filter(|s| s.group == group) {
            let default = if setting.default.is_empty() {
                String::new()
            } else {
                format!("`{}`", setting.default)
            };
            let mirrors = match setting.mirrors {
                Mirrors::Own => String::new(),
                Mirrors::Same => "same".to_owned(),
                Mirrors::Like(text) => text.to_owned(),
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | {} |\n",
                setting.name,
                setting.kind.describe(),
                default,
                mirrors,
                setting.doc
            ));
        }
    }
    out
}

/// Every setting with the value in force, secrets and URL passwords
/// redacted, each marked `set` or `default` (`rate-limiter settings`).
pub fn current(lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    for group in GROUPS {
        out.push_str(&format!("# {}\n", group.title()));
        for setting in SETTINGS.iter().filter(|s| s.group == group) {
            let given = lookup(setting.name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty());
            let (value, source) = match given {
                Some(value) => (super::redact(setting.name, &value), "set"),
                None => (setting.default.to_owned(), "default"),
            };
            let line = format!("{}={value}", setting.name);
            out.push_str(&format!("{line:<48} # {source}\n"));
        }
    }
    out
}
