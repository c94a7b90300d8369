//! Progress from a model's logs: the latest tqdm-style bar
//! (` 42%|████      | 21/50 [00:03<00:04, 6.1it/s]`). Logs are whatever the model printed
//! (prompts included), so any text must be safe here.

/// The progress (0.0 to 1.0) shown by the last tqdm bar in `logs`, if any.
///
/// tqdm redraws with `\r`, so the latest state is the last bar anywhere in the text. The
/// exact `n/total` counter is preferred; the percentage is the fallback.
pub fn progress(logs: &str) -> Option<f64> {
    let bar = logs.rfind("%|")?;
    // The digits right before `%|`; whatever precedes them may be any text (models echo
    // the prompt), so the cut is made on a character boundary.
    let percent_start = logs[..bar]
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .len();
    let percent: f64 = logs[percent_start..bar].parse().ok()?;
    let after_bar = &logs[bar + 2..];
    let counter = after_bar
        .split_once('|')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|counter| counter.split_once('/'))
        .and_then(|(done, total)| Some((done.parse::<f64>().ok()?, total.parse::<f64>().ok()?)))
        .filter(|(done, total)| *total > 0.0 && done <= total);
    let progress = match counter {
        Some((done, total)) => done / total,
        None => percent / 100.0,
    };
    (0.0..=1.0).contains(&progress).then_some(progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a real diffusers run: tqdm writes each redraw after a carriage return.
    const REAL_TQDM: &str = "Using seed: 42069\nPrompt: a studio photo of a rainbow colored corgi\ntxt2img mode\n  0%|          | 0/50 [00:00<?, ?it/s]\r  2%|▏         | 1/50 [00:00<00:07,  6.61it/s]\r  4%|▍         | 2/50 [00:00<00:06,  7.43it/s]\r 42%|████▏     | 21/50 [00:03<00:04,  6.93it/s]";

    #[test]
    fn reads_the_latest_bar() {
        assert_eq!(progress(REAL_TQDM), Some(0.42));
        assert_eq!(progress(" 42%|████      | 21/50 [00:03<00:04]"), Some(0.42));
        assert_eq!(
            progress("100%|██████████| 50/50 [00:07<00:00,  6.82it/s]\n"),
            Some(1.0)
        );
    }

    #[test]
    fn prefers_the_exact_counter_and_falls_back_to_percent() {
        assert_eq!(
            progress(" 33%|███▎      | 1/3 [00:01<00:02]"),
            Some(1.0 / 3.0)
        );
        assert_eq!(progress(" 70%|███████   "), Some(0.7));
    }

    #[test]
    fn no_bar_no_progress() {
        assert_eq!(progress("Using seed: 42069\nLoading pipeline..."), None);
        assert_eq!(progress(""), None);
        assert_eq!(progress("100% done | 5/0"), None);
    }

    #[test]
    fn any_text_before_the_bar_is_safe() {
        // Multi-byte characters right before `%|` (prompts echoed in the logs) once
        // panicked: a byte index inside a character.
        assert_eq!(progress("Prompt: café 50%|█████"), Some(0.5));
        assert_eq!(progress("é%|"), None);
        assert_eq!(progress("日本%| 1/2"), None);
        assert_eq!(progress("🦊42%|████▏ | 21/50"), Some(0.42));
        assert_eq!(progress("%|"), None);
        assert_eq!(progress("é%|é|é/é"), None);
    }
}
