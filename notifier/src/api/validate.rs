//! What a creation request must be before anything is debited: each check answers `400`
//! with the reason.

use shared::jobs::UPSCALE_MARKER;

use crate::api::error::JobsError;

pub const MAX_PROMPT_CHARS: usize = 2000;
pub const MAX_NAME_CHARS: usize = 100;

/// A generation's prompt, trimmed: not empty, at most [`MAX_PROMPT_CHARS`], no NUL.
pub fn prompt(prompt: &str) -> Result<&str, JobsError> {
    let prompt = prompt.trim();
    if prompt.is_empty() {
        return Err(JobsError::Invalid("the prompt is empty".into()));
    }
    let length = prompt.chars().count();
    if length > MAX_PROMPT_CHARS {
        return Err(JobsError::Invalid(format!(
            "the prompt has {length} characters; at most {MAX_PROMPT_CHARS} are allowed"
        )));
    }
    no_nul("the prompt", prompt)?;
    // Rows whose prompt starts with the marker are upscales (the web app's convention): a
    // person's prompt must never be taken for one.
    if prompt.starts_with(UPSCALE_MARKER) {
        return Err(JobsError::Invalid(format!(
            "a prompt may not start with {UPSCALE_MARKER}, which marks upscales; use the Upscale button on a finished image"
        )));
    }
    Ok(prompt)
}

/// A model's name, trimmed: 1 to [`MAX_NAME_CHARS`] characters, none of them control.
pub fn model_name(name: &str) -> Result<&str, JobsError> {
    let name = name.trim();
    let length = name.chars().count();
    if name.is_empty() || length > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(JobsError::Invalid(format!(
            "the model name must be 1 to {MAX_NAME_CHARS} characters without control characters"
        )));
    }
    Ok(name)
}

/// PostgreSQL refuses NUL in text: that is the client's mistake, answered `400`.
pub fn no_nul(what: &str, text: &str) -> Result<(), JobsError> {
    if text.contains('\0') {
        return Err(JobsError::Invalid(format!(
            "{what} contains a NUL character"
        )));
    }
    Ok(())
}

pub fn zip_url(text: &str) -> Result<(), JobsError> {
    let invalid = |why: &str| {
        JobsError::Invalid(format!(
            "input_images must be the https URL of a zip file of your photos: {why}"
        ))
    };
    let url = reqwest::Url::parse(text.trim()).map_err(|err| invalid(&err.to_string()))?;
    if url.scheme() != "https" {
        return Err(invalid(&format!("{} is not https", url.scheme())));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_zips_must_be_https() {
        assert!(zip_url("https://example.com/photos.zip").is_ok());
        for bad in [
            "http://example.com/a.zip",
            "photos.zip",
            "",
            "file:///etc/passwd",
        ] {
            assert!(zip_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn prompts_and_names_are_trimmed_and_bounded() {
        assert_eq!(prompt("  a corgi ").unwrap(), "a corgi");
        assert!(prompt("   ").is_err());
        assert!(prompt("a\0b").is_err());
        assert!(prompt(&"x".repeat(MAX_PROMPT_CHARS + 1)).is_err());
        assert!(
            prompt("[UPSCALED] a corgi").is_err(),
            "never taken for an upscale"
        );
        assert!(prompt("a corgi [UPSCALED]").is_ok());
        assert_eq!(model_name(" me ").unwrap(), "me");
        assert!(model_name("a\nb").is_err());
    }
}
