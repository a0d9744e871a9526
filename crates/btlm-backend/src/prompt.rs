//! The chat prompt format of the Python `CerebrasBTLMMiner` (text-prompting v2.1.6).

/// The Python miner's default `--btlm.system_prompt`.
pub const DEFAULT_SYSTEM_PROMPT: &str = "A chat between a curious user and an artificial intelligence assistant.\nThe assistant gives helpful, detailed, and polite answers to the user's questions. ";

/// Builds the text the model completes from a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptFormat {
    /// Start with [`PromptFormat::system_prompt`] and drop a system message equal to the
    /// conversation's first message (`--btlm.do_prompt_injection`).
    pub do_prompt_injection: bool,
    /// The injected system prompt (`--btlm.system_prompt`).
    pub system_prompt: String,
}

impl Default for PromptFormat {
    fn default() -> Self {
        PromptFormat {
            do_prompt_injection: false,
            system_prompt: DEFAULT_SYSTEM_PROMPT.to_string(),
        }
    }
}

impl PromptFormat {
    /// The prompt for `roles`/`messages` (paired like Python's `zip`: extra items of the
    /// longer list are ignored): `"system: …\n"`, `"user: …\n"`, `"assistant: …\n"` lines
    /// (other roles are skipped), then `"assistant: "`.
    pub fn format<R: AsRef<str>, M: AsRef<str>>(&self, roles: &[R], messages: &[M]) -> String {
        let mut out = String::new();
        if self.do_prompt_injection {
            out.push_str(&self.system_prompt);
        }
        let first = messages.first().map(AsRef::as_ref);
        for (role, message) in roles.iter().zip(messages) {
            let message = message.as_ref();
            let prefix = match role.as_ref() {
                "system" if self.do_prompt_injection && Some(message) == first => continue,
                "system" => "system: ",
                "assistant" => "assistant: ",
                "user" => "user: ",
                _ => continue,
            };
            out.push_str(prefix);
            out.push_str(message);
            out.push('\n');
        }
        out.push_str("assistant: ");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> PromptFormat {
        PromptFormat::default()
    }

    fn injecting() -> PromptFormat {
        PromptFormat {
            do_prompt_injection: true,
            ..PromptFormat::default()
        }
    }

    #[test]
    fn default_system_prompt_is_the_python_text() {
        assert!(DEFAULT_SYSTEM_PROMPT.starts_with("A chat between a curious user"));
        assert!(DEFAULT_SYSTEM_PROMPT.contains("assistant.\nThe assistant gives"));
        assert!(DEFAULT_SYSTEM_PROMPT.ends_with("to the user's questions. "));
    }

    #[test]
    fn plain_conversation() {
        let p = plain().format(
            &["system", "user", "assistant", "user"],
            &["Be brief.", "Hi", "Hello!", "Capital of France?"],
        );
        assert_eq!(
            p,
            "system: Be brief.\nuser: Hi\nassistant: Hello!\nuser: Capital of France?\nassistant: "
        );
    }

    #[test]
    fn unknown_roles_are_ignored_and_zip_truncates() {
        let p = plain().format(&["tool", "user", "user"], &["x", "question"]);
        assert_eq!(p, "user: question\nassistant: ");
        assert_eq!(plain().format::<&str, &str>(&[], &[]), "assistant: ");
    }

    #[test]
    fn injection_replaces_the_first_system_message() {
        let p = injecting().format(&["system", "user"], &["You are a bot.", "Hi"]);
        assert_eq!(p, format!("{DEFAULT_SYSTEM_PROMPT}user: Hi\nassistant: "));
        // A later system message differing from messages[0] is kept.
        let p = injecting().format(
            &["system", "user", "system"],
            &["You are a bot.", "Hi", "Answer in French."],
        );
        assert_eq!(
            p,
            format!("{DEFAULT_SYSTEM_PROMPT}user: Hi\nsystem: Answer in French.\nassistant: ")
        );
        // Python compares with messages[0] whatever its role: a system message repeating the
        // first (user) message is dropped too.
        let p = injecting().format(&["user", "system"], &["same", "same"]);
        assert_eq!(p, format!("{DEFAULT_SYSTEM_PROMPT}user: same\nassistant: "));
    }

    #[test]
    fn custom_system_prompt() {
        let f = PromptFormat {
            do_prompt_injection: true,
            system_prompt: "SYS\n".into(),
        };
        assert_eq!(f.format(&["user"], &["q"]), "SYS\nuser: q\nassistant: ");
    }
}
