//! The plugin and ztunnel sides talking over a real Unix socket, with a real netns descriptor.

use std::{
    net::IpAddr,
    os::fd::{AsFd, OwnedFd},
    sync::{Arc, Mutex},
    time::Duration,
};

use super::*;

#[derive(Default)]
struct Recorder {
    enrolled: Mutex<Vec<(PodRef, Vec<IpAddr>, u64)>>,
    unenrolled: Mutex<Vec<PodRef>>,
}

impl EnrollmentHandler for Recorder {
    async fn enroll(
        &self,
        pod: PodRef,
        ips: Vec<IpAddr>,
        _path: String,
        netns: OwnedFd,
    ) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        let inode = std::fs::File::from(netns)
            .metadata()
            .map_err(|error| error.to_string())?
            .ino();
        if pod.name == "refuse-me" {
            return Err("not in the workload config".into());
        }
        self.enrolled
            .lock()
            .map_err(|_| "poisoned")?
            .push((pod, ips, inode));
        Ok(())
    }

    async fn check(&self, pod: PodRef, _ips: Vec<IpAddr>) -> Result<(), String> {
        let enrolled = self.enrolled.lock().map_err(|_| "poisoned")?;
        if enrolled.iter().any(|(known, _, _)| *known == pod) {
            Ok(())
        } else {
            Err("not enrolled".into())
        }
    }

    async fn unenroll(&self, pod: PodRef) -> Result<(), String> {
        self.unenrolled.lock().map_err(|_| "poisoned")?.push(pod);
        Ok(())
    }
}

fn pod(name: &str) -> PodRef {
    PodRef {
        name: name.into(),
        namespace: "default".into(),
        container_id: format!("{name}-sandbox"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enroll_carries_the_netns_descriptor_and_waits_for_the_answer() {
    let dir = std::env::temp_dir().join(format!("zt-enroll-{}", std::process::id()));
    let path = dir.join(SOCKET_NAME);
    let server = EnrollmentServer::bind(&path).expect("bind");
    let recorder = Arc::new(Recorder::default());
    let serving = tokio::spawn(server.serve(recorder.clone()));

    let client = EnrollmentClient::new(&path, Duration::from_secs(5));
    let netns = std::fs::File::open("/proc/self/ns/net").expect("own netns");
    let expected_inode = {
        use std::os::unix::fs::MetadataExt;
        netns.metadata().expect("stat netns").ino()
    };
    let ips: Vec<IpAddr> = vec!["198.18.1.7".parse().unwrap()];
    let outcomes = tokio::task::spawn_blocking(move || {
        let enroll = |name: &str| Request::Enroll {
            pod: pod(name),
            ips: ips.clone(),
            netns_path: "/proc/self/ns/net".into(),
        };
        (
            client.send(&enroll("sleep"), Some(netns.as_fd())),
            client.send(&enroll("refuse-me"), Some(netns.as_fd())),
            client.send(&enroll("no-fd"), None),
            client.send(
                &Request::Check {
                    pod: pod("sleep"),
                    ips: vec![],
                },
                None,
            ),
            client.send(&Request::Unenroll { pod: pod("sleep") }, None),
        )
    })
    .await
    .expect("client thread");
    println!("outcomes: {outcomes:?}");
    serving.abort();
    let _ = std::fs::remove_dir_all(&dir);

    assert!(outcomes.0.is_ok());
    assert!(
        matches!(outcomes.1, Err(EnrollmentError::Refused(ref message)) if message.contains("workload config"))
    );
    assert!(
        matches!(outcomes.2, Err(EnrollmentError::Refused(ref message)) if message.contains("file descriptor"))
    );
    assert!(outcomes.3.is_ok(), "check of an enrolled pod");
    assert!(outcomes.4.is_ok());
    let enrolled = recorder.enrolled.lock().unwrap();
    assert_eq!(enrolled.len(), 1);
    assert_eq!(enrolled[0].0, pod("sleep"));
    assert_eq!(
        enrolled[0].2, expected_inode,
        "the handler got the very netns the plugin sent"
    );
    assert_eq!(*recorder.unenrolled.lock().unwrap(), vec![pod("sleep")]);
}

#[test]
fn a_missing_socket_says_ztunnel_is_not_running() {
    let client = EnrollmentClient::new("/nonexistent/zt/enrollment.sock", Duration::from_secs(1));
    let error = client
        .send(&Request::Unenroll { pod: pod("x") }, None)
        .unwrap_err();
    assert!(error.to_string().contains("is ztunnel running"), "{error}");
}
