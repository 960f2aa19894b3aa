//! Checks shared by the tests of plan files: the rendered form of a located plan error, and
//! the commented-out tables of the reference plan.

/// Checks that `rendered`, a plan error, reads `{dir}{name}.toml:{line}:{column}: {message}`
/// with at most one help line below, at the `line` and `column` its location says, and that
/// it names its key and says how to fix the problem.
pub fn assert_located(
    rendered: &str,
    dir: &str,
    (line, column): (usize, usize),
    has_key: bool,
    has_help: bool,
) {
    let first = rendered.lines().next().unwrap_or_default();
    assert!(
        has_location(first, dir),
        "the first line must be `path:line:column: message`, got:\n{rendered}"
    );
    assert!(line >= 1 && column >= 1);
    assert!(has_key, "the error must name the key:\n{rendered}");
    assert!(
        has_help,
        "the error must say how to fix the problem:\n{rendered}"
    );
    assert!(
        rendered.lines().count() <= 2,
        "expected a message and at most one help line:\n{rendered}"
    );
}

/// Whether `line` looks like `{dir}{name}.toml:{line}:{column}: {message}`.
fn has_location(line: &str, dir: &str) -> bool {
    let Some(rest) = line.strip_prefix(dir) else {
        return false;
    };
    let Some((name, rest)) = rest.split_once(".toml:") else {
        return false;
    };
    if name.is_empty() || name.contains(':') {
        return false;
    }
    let mut parts = rest.splitn(3, ':');
    let number = |part: Option<&str>| {
        part.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
    };
    number(parts.next())
        && number(parts.next())
        && parts
            .next()
            .is_some_and(|message| message.starts_with(' ') && message.trim().len() > 10)
}

/// The part of `plan` from the line `# {first}` to the line before `{until}`, with its
/// commented-out key (`# key = value`) and header (`# [table]`) lines uncommented.
///
/// # Panics
///
/// If `plan` has no line `# {first}`, or no `{until}` after it.
pub fn uncommented(plan: &str, first: &str, until: &str) -> String {
    let start = plan
        .find(&format!("\n# {first}\n"))
        .unwrap_or_else(|| panic!("{first} is not documented"))
        + 1;
    let end = start
        + plan[start..]
            .find(&format!("\n{until}"))
            .unwrap_or_else(|| panic!("{until} is not documented after {first}"));
    let is_toml = |line: &str| {
        line.starts_with('[')
            || line
                .split_once(" = ")
                .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
    };
    plan[start..end]
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(code) if is_toml(code) => format!("{code}\n"),
            _ => format!("{line}\n"),
        })
        .collect()
}
