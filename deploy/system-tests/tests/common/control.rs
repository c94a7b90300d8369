//! The control script of the servers a run starts beside this machine's own
//! (`deploy/lib/rabbitmq-cluster`, `deploy/lib/postgres-pair`): its path comes in an
//! environment variable the deploy script sets.

use std::process::Command;

pub struct ControlScript {
    path: String,
}

impl ControlScript {
    /// The script named by `variable`, which `deploy_script` sets.
    pub fn from_env(variable: &str, deploy_script: &str) -> Self {
        let path = std::env::var(variable).unwrap_or_else(|_| {
            panic!("{variable} names the control script ({deploy_script} sets it)")
        });
        Self { path }
    }

    /// Runs the script; its output, or `None` when it failed.
    pub fn try_run(&self, args: &[&str]) -> Option<String> {
        let output = Command::new(&self.path).args(args).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Runs the script; its output. A failure stops the run with what the script printed.
    pub fn run(&self, args: &[&str]) -> String {
        let output = Command::new(&self.path)
            .args(args)
            .output()
            .unwrap_or_else(|err| panic!("cannot run {}: {err}", self.path));
        assert!(
            output.status.success(),
            "{} {args:?}: {}{}",
            self.path,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}
