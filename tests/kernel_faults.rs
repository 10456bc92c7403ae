//! Kernel and CNI faults: what ztunnel does when the kernel side is not as it expects.

use std::{path::PathBuf, process::Command, time::Duration};

use ztunnel_e2e::{TestEnv, env::checked, ztunnel::daemon_until_exit};

/// How long a daemon that cannot use its bpffs root may take to give up (generous: CI is slow;
/// the figure printed is what matters).
const REFUSAL_DEADLINE: Duration = Duration::from_secs(30);

/// A bpffs mounted by the test (then remounted read-only); unmounted on drop.
struct ReadOnlyBpffs {
    path: PathBuf,
}

impl ReadOnlyBpffs {
    fn mount(path: PathBuf) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&path)?;
        checked(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&path))?;
        let mount = Self { path };
        checked(
            Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(&mount.path),
        )?;
        Ok(mount)
    }
}

impl Drop for ReadOnlyBpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[test]
fn a_bpffs_root_that_is_not_a_writable_bpffs_stops_the_daemon_with_a_clear_message()
-> anyhow::Result<()> {
    let env = TestEnv::new("kernel_faults_bpffs")?;
    let plain = env.scratch.join("plain-dir");
    std::fs::create_dir_all(&plain)?;
    let plain_root = plain.join("ztunnel");
    let not_bpffs = daemon_until_exit(&env, &plain_root, REFUSAL_DEADLINE)?;

    let read_only = ReadOnlyBpffs::mount(env.scratch.join("ro-bpf"))?;
    let read_only_root = read_only.path.join("ztunnel");
    let on_read_only = daemon_until_exit(&env, &read_only_root, REFUSAL_DEADLINE)?;

    for (case, outcome) in [
        ("plain directory", &not_bpffs),
        ("read-only bpffs", &on_read_only),
    ] {
        let first_error = outcome
            .log
            .lines()
            .find(|line| line.starts_with("Error:"))
            .unwrap_or("<no Error: line>");
        println!(
            "{case}: {} after {:?}: {first_error}",
            outcome.status, outcome.elapsed
        );
    }
    println!(
        "figures: kernel_faults bpffs_not_bpffs_exit_ms={} bpffs_read_only_exit_ms={}",
        not_bpffs.elapsed.as_millis(),
        on_read_only.elapsed.as_millis()
    );

    assert!(
        !not_bpffs.status.success(),
        "the daemon started on a plain directory"
    );
    assert!(
        not_bpffs.log.contains(&plain_root.display().to_string())
            && not_bpffs.log.contains("not on a bpf filesystem"),
        "the message names the path and the problem:\n{}",
        not_bpffs.log
    );
    assert!(
        !plain_root.exists(),
        "nothing was created on the plain directory"
    );
    assert!(
        !on_read_only.status.success(),
        "the daemon started on a read-only bpffs"
    );
    assert!(
        on_read_only
            .log
            .contains(&read_only_root.display().to_string())
            && on_read_only.log.contains("mounted read-only"),
        "the message names the path and the problem:\n{}",
        on_read_only.log
    );
    assert!(
        !on_read_only.log.contains("ztunnel daemon ready"),
        "the daemon never reported ready"
    );
    Ok(())
}
