//! TOML syntax errors in the words of a plan.

use super::field::Diag;

/// Describes a TOML syntax error in the words of a plan.
pub(super) fn syntax_error(text: &str, err: &toml::de::Error) -> Diag {
    let span = err.span().unwrap_or(0..0);
    let start = span.start.min(text.len());
    let message = err.message().lines().next().unwrap_or("").trim();
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[line_start..line_end];
    let header = line.trim_start().starts_with('[');
    // The key whose value is malformed: the error is right of `key =` on its line.
    let key = line.split_once('=').and_then(|(lhs, _)| {
        let lhs = lhs.trim();
        let is_key = !header
            && !lhs.is_empty()
            && lhs
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.\"' ".contains(c));
        (is_key && start > line_start + line.find('=')?).then(|| lhs.to_owned())
    });

    let mut diag = Diag {
        span: span.clone(),
        syntax: true,
        key: key.clone(),
        message: String::new(),
        help: None,
    };
    if message == "duplicate key" {
        let dup = text
            .get(span.clone())
            .unwrap_or("")
            .trim_matches(['"', '\''])
            .to_owned();
        diag.key = Some(dup.clone());
        let table = line
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim();
        if header && line.trim_start().starts_with("[[") {
            diag.message =
                format!("`[[{table}]]` cannot add to `{dup}`, which is already defined as a value");
            diag.help = Some(format!(
                "write every entry as a `[[{table}]]` table, or every entry in the array value, \
                 not both"
            ));
        } else if header {
            diag.message = format!("table `[{table}]` is defined more than once");
            diag.help = Some("merge the two tables into one".to_owned());
        } else {
            diag.message = format!("duplicate key `{dup}`: a key may appear only once per table");
            let in_test = text[..line_start]
                .lines()
                .rev()
                .find(|l| l.trim_start().starts_with('['))
                .is_some_and(|l| l.trim() == "[[test]]");
            diag.help = Some(if in_test {
                "remove one of them; if it belongs to another test, start that test with its own \
                 `[[test]]` line"
                    .to_owned()
            } else {
                "remove one of them".to_owned()
            });
        }
        return diag;
    }

    diag.message = match &key {
        Some(key) => format!("invalid TOML in the value of `{key}`: {message}"),
        None => format!("invalid TOML: {message}"),
    };
    let example_key = key.as_deref().unwrap_or("key");
    diag.help = if message.contains("must be quoted") {
        Some(format!(
            "put text in double quotes, for example `{example_key} = \"value\"`"
        ))
    } else if message.contains("basic string") || message.contains("literal string") {
        Some(
            "end the string with a matching quote on the same line; for text over several \
             lines use triple quotes (\"\"\")"
                .to_owned(),
        )
    } else if message.contains("unclosed array") {
        Some("end the array with `]`, and separate its entries with commas".to_owned())
    } else if message.contains("unclosed table") || message.contains("table header") {
        Some("table headers look like `[run]`, `[defaults]` or `[[test]]`".to_owned())
    } else {
        None
    };
    diag
}
