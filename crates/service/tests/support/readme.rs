//! README.md's fenced code blocks, so that tests check the examples shown there rather than
//! copies of them.
#![allow(dead_code)]

/// README.md as compiled in.
pub const README: &str = include_str!("../../../../README.md");

/// The bodies of README.md's fenced blocks tagged `lang` (```` ```toml ````), in order.
pub fn blocks(lang: &str) -> Vec<String> {
    let opening = format!("```{lang}");
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in README.lines() {
        let trimmed = line.trim();
        match current.as_mut() {
            Some(body) if trimmed == "```" => {
                blocks.push(std::mem::take(body));
                current = None;
            }
            Some(body) => {
                body.push_str(line);
                body.push('\n');
            }
            None if trimmed == opening => current = Some(String::new()),
            None => {}
        }
    }
    blocks
}
