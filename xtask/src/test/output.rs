//! Reading `cargo test --show-output` as it runs: what reaches the terminal, the `figures:`
//! lines of each test, and the totals of every `test result:` line.
//!
//! Passing tests' captured output (the `successes:` sections: harness detail, daemon logs,
//! ANSI colours) is left out unless `--verbose`; the `figures:` lines in it are kept and shown
//! together at the end. Failing tests' output, every `test … ok|FAILED|ignored` line and
//! cargo's own `test result:` lines pass through.

use crate::command::strip_ansi;

/// Where in libtest's output a line is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    /// Test status lines, `running N tests`, `test result:`.
    Main,
    /// The captured output of passing tests.
    Successes,
    /// The captured output of failing tests and their list.
    Failures,
}

/// The totals over every test binary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
}

/// The state of one `cargo test` run's standard output.
#[derive(Debug)]
pub struct TestOutput {
    verbose: bool,
    section: Section,
    current_test: String,
    /// (test name, figures line), in the order printed.
    pub figures: Vec<(String, String)>,
    pub totals: Totals,
}

/// What the figures lines start with.
const FIGURES_MARKER: &str = "figures:";

impl TestOutput {
    pub fn new(verbose: bool) -> Self {
        Self {
            verbose,
            section: Section::Main,
            current_test: String::new(),
            figures: Vec::new(),
            totals: Totals::default(),
        }
    }

    /// Takes one line of output; returns it (without ANSI escapes) if it is to be shown.
    pub fn line(&mut self, raw: &str) -> Option<String> {
        let line = strip_ansi(raw);
        let trimmed = line.trim();
        if trimmed == "successes:" {
            self.section = Section::Successes;
        } else if trimmed == "failures:" {
            self.section = Section::Failures;
        } else if trimmed.starts_with("test result:") || trimmed.starts_with("running ") {
            self.section = Section::Main;
            if let Some(totals) = parse_result(trimmed) {
                self.totals.passed += totals.passed;
                self.totals.failed += totals.failed;
                self.totals.ignored += totals.ignored;
            }
        } else if let Some(name) = trimmed
            .strip_prefix("---- ")
            .and_then(|rest| rest.strip_suffix(" stdout ----"))
        {
            self.current_test = name.to_owned();
        } else if let Some(at) = line.find(FIGURES_MARKER) {
            self.figures
                .push((self.current_test.clone(), line[at..].to_owned()));
        }
        let shown = self.verbose || self.section != Section::Successes;
        shown.then_some(line)
    }
}

/// `test result: ok. 3 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out; finished in …`
fn parse_result(line: &str) -> Option<Totals> {
    let rest = line.strip_prefix("test result:")?;
    let count = |word: &str| -> Option<u64> {
        rest.split(';')
            .find_map(|part| part.trim().strip_suffix(word))
            .and_then(|number| number.trim().rsplit(' ').next()?.parse().ok())
    };
    Some(Totals {
        passed: count(" passed")?,
        failed: count(" failed")?,
        ignored: count(" ignored")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "running 2 tests
test a_passes ... ok
test b_fails ... FAILED

successes:

---- a_passes stdout ----
\u{1b}[33m WARN\u{1b}[0m ztunnel: noisy daemon line
figures: probe sent=3 ok=3

successes:
    a_passes

failures:

---- b_fails stdout ----
figures: other sent=1 ok=0
thread 'b_fails' panicked

failures:
    b_fails

test result: FAILED. 1 passed; 1 failed; 4 ignored; 0 measured; 0 filtered out; finished in 1.00s
";

    #[test]
    fn passing_output_is_hidden_figures_and_totals_are_kept() {
        let mut output = TestOutput::new(false);
        // Not printed: `cargo xtask test` reads this test's own output (`--show-output`), and the
        // fixture's `test result: FAILED` line would count as a real failure there.
        let shown: Vec<String> = RUN.lines().filter_map(|line| output.line(line)).collect();
        assert!(!shown.iter().any(|line| line.contains("noisy daemon line")));
        assert!(
            shown
                .iter()
                .any(|line| line.contains("thread 'b_fails' panicked"))
        );
        assert!(
            shown
                .iter()
                .any(|line| line.starts_with("test result: FAILED"))
        );
        assert_eq!(
            output.figures,
            vec![
                (
                    "a_passes".to_owned(),
                    "figures: probe sent=3 ok=3".to_owned()
                ),
                (
                    "b_fails".to_owned(),
                    "figures: other sent=1 ok=0".to_owned()
                ),
            ]
        );
        assert_eq!(
            output.totals,
            Totals {
                passed: 1,
                failed: 1,
                ignored: 4
            }
        );
    }

    #[test]
    fn verbose_shows_passing_output_without_ansi_codes() {
        let mut output = TestOutput::new(true);
        let shown: Vec<String> = RUN.lines().filter_map(|line| output.line(line)).collect();
        assert!(
            shown
                .iter()
                .any(|line| line == " WARN ztunnel: noisy daemon line")
        );
    }
}
