//! Reading a JUnit XML document in assertions.

/// The `<testcase>` element named `name` in the JUnit document `xml` (its opening tag through
/// its content, or the whole element when it closes itself). Panics, showing the document, when
/// there is none.
pub fn junit_case<'a>(xml: &'a str, name: &str) -> &'a str {
    let start = xml
        .find(&format!("<testcase name=\"{name}\""))
        .unwrap_or_else(|| panic!("no test case {name} in\n{xml}"));
    let rest = &xml[start..];
    let head_end = rest.find('>').unwrap();
    if rest[..head_end].ends_with('/') {
        return &rest[..=head_end];
    }
    &rest[..rest.find("</testcase>").unwrap()]
}
