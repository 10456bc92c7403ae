//! The inbound side connects to the application from the original source address
//! (IP_TRANSPARENT): two pods in network namespaces made by this test (198.18.0.2 → 198.18.0.1
//! over a veth pair, no routes out), the client pod's ztunnel sockets made inside its netns,
//! the server pod's listeners and upstream sockets inside its own. Namespaces carry a per-run
//! prefix and are removed on drop, even when the test fails.

mod hbone_support;

use std::{
    fs::File, io, net::SocketAddr, os::fd::AsRawFd, process::Command, sync::Arc, time::Duration,
};

use hbone_support::{id, init_tracing, within};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket},
};
use ztunnel::{
    identity::{CertificateAuthority, CertificateStore},
    proxy::{Drain, PodContext, ProxyContext, WorkloadInfo, directory::StaticDirectory, listeners},
    socket::{SocketFactory, set_mark},
};
use ztunnel_common::constants::{BYPASS_MARK, HBONE_PORT, OUTBOUND_PORT, UPSTREAM_MARK};

/// Routing table the server pod uses to deliver replies to ztunnel's transparent sockets.
const LOCAL_DELIVERY_TABLE: &str = "133";

fn run(args: &[&str]) {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Two namespaces joined by a veth pair; deleted on drop.
struct Pods {
    client: String,
    server: String,
}

impl Pods {
    fn create() -> Self {
        let prefix = format!("ztb{}", std::process::id());
        let pods = Self {
            client: format!("{prefix}-a"),
            server: format!("{prefix}-b"),
        };
        for name in [&pods.client, &pods.server] {
            run(&["ip", "netns", "add", name]);
            run(&["ip", "-n", name, "link", "set", "lo", "up"]);
        }
        let (veth_a, veth_b) = (format!("{prefix}a"), format!("{prefix}b"));
        run(&[
            "ip",
            "link",
            "add",
            &veth_a,
            "netns",
            &pods.client,
            "type",
            "veth",
            "peer",
            "name",
            &veth_b,
            "netns",
            &pods.server,
        ]);
        for (ns, dev, local, remote) in [
            (&pods.client, &veth_a, "198.18.0.2", "198.18.0.1"),
            (&pods.server, &veth_b, "198.18.0.1", "198.18.0.2"),
        ] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{local}/32"),
                "dev",
                dev,
            ]);
            run(&["ip", "-n", ns, "link", "set", dev, "up"]);
            run(&[
                "ip",
                "-n",
                ns,
                "route",
                "add",
                &format!("{remote}/32"),
                "dev",
                dev,
            ]);
        }
        // The return path (docs/architecture.md, "Following a connection"): the application's accepted socket inherits the SYN's mark
        // (tcp_fwmark_accept), and that mark routes its replies to the local table, i.e. back to
        // ztunnel's transparent socket instead of out of the pod.
        run(&[
            "ip",
            "netns",
            "exec",
            &pods.server,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.tcp_fwmark_accept=1",
        ]);
        let mark = format!("{UPSTREAM_MARK:#x}");
        run(&[
            "ip",
            "-n",
            &pods.server,
            "rule",
            "add",
            "fwmark",
            &mark,
            "lookup",
            LOCAL_DELIVERY_TABLE,
        ]);
        run(&[
            "ip",
            "-n",
            &pods.server,
            "route",
            "add",
            "local",
            "0.0.0.0/0",
            "dev",
            "lo",
            "table",
            LOCAL_DELIVERY_TABLE,
        ]);
        pods
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for name in [&self.client, &self.server] {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

/// Makes sockets inside a named netns by entering it around `socket()` (this thread only).
struct NetnsSockets {
    target: File,
}

impl NetnsSockets {
    fn new(name: &str) -> Self {
        Self {
            target: File::open(format!("/run/netns/{name}")).expect("open netns"),
        }
    }

    fn inside<T>(&self, make: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let home = File::open("/proc/thread-self/ns/net")?;
        // SAFETY: both fds are open netns files; setns only changes this thread's namespace,
        // and we switch back before returning.
        if unsafe { libc::setns(self.target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let made = make();
        // SAFETY: as above.
        let back = unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            back,
            0,
            "cannot return to the original netns: {}",
            io::Error::last_os_error()
        );
        made
    }

    fn listen(&self, address: SocketAddr) -> TcpListener {
        self.inside(|| {
            let socket = TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.bind(address)?;
            socket.listen(128)
        })
        .unwrap_or_else(|e| panic!("listen on {address}: {e}"))
    }
}

impl SocketFactory for NetnsSockets {
    fn new_tcp_socket(&self, ipv6: bool) -> io::Result<TcpSocket> {
        self.inside(|| {
            let socket = if ipv6 {
                TcpSocket::new_v6()?
            } else {
                TcpSocket::new_v4()?
            };
            set_mark(&socket, BYPASS_MARK)?;
            Ok(socket)
        })
    }
}

#[test]
fn the_application_sees_the_original_source_address() {
    init_tracing();
    let pods = Pods::create();
    println!(
        "set up: netns {} (client pod 198.18.0.2) ↔ veth ↔ netns {} (server pod 198.18.0.1); fwmark {UPSTREAM_MARK:#x} → table {LOCAL_DELIVERY_TABLE} local in the server pod",
        pods.client, pods.server
    );
    // One thread runs everything, so entering a netns around socket() affects nothing else.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (peer_seen, echoed) = runtime.block_on(async {
        let client_sockets = Arc::new(NetnsSockets::new(&pods.client));
        let server_sockets = Arc::new(NetnsSockets::new(&pods.server));
        let authority = Arc::new(CertificateAuthority::generate("cluster.local").unwrap());
        let store = Arc::new(
            CertificateStore::with_authority(authority, "cluster.local", Duration::from_secs(3600))
                .unwrap(),
        );
        let client_info = WorkloadInfo::new(id("default", "sleep"), "198.18.0.2".parse().unwrap());
        let server_info = WorkloadInfo::new(id("default", "echo"), "198.18.0.1".parse().unwrap());
        let directory = StaticDirectory::new()
            .with_workload(client_info.clone(), true)
            .with_workload(server_info.clone(), true);
        let (_drain, watch) = Drain::new();
        let context = ProxyContext::new(Arc::new(directory), store.clone(), watch);
        let client_pod = PodContext::new(client_info, client_sockets.clone(), &store).unwrap();
        let server_pod = PodContext::new(server_info, server_sockets.clone(), &store).unwrap();

        let hbone = server_sockets.listen(SocketAddr::from(([198, 18, 0, 1], HBONE_PORT)));
        tokio::spawn(listeners::serve_inbound_hbone(
            context.clone(),
            server_pod,
            hbone,
        ));
        let app = server_sockets.listen("198.18.0.1:8080".parse().unwrap());
        let outbound = client_sockets.listen(SocketAddr::from(([127, 0, 0, 1], OUTBOUND_PORT)));
        tokio::spawn(listeners::serve_outbound(
            context.clone(),
            client_pod,
            outbound,
            Arc::new(listeners::FixedDestination(
                "198.18.0.1:8080".parse().unwrap(),
            )),
        ));
        let app_task = tokio::spawn(async move {
            let (mut stream, peer) = app.accept().await.expect("app accept");
            let mut data = Vec::new();
            stream.read_to_end(&mut data).await.expect("app read");
            stream.write_all(&data).await.expect("app write");
            stream.shutdown().await.expect("app shutdown");
            peer
        });
        // The application in the client pod connects to its own outbound listener, as the
        // connect hook would make it do.
        let socket = client_sockets.new_tcp_socket(false).unwrap();
        let mut stream = socket
            .connect(SocketAddr::from(([127, 0, 0, 1], OUTBOUND_PORT)))
            .await
            .expect("connect");
        stream.write_all(b"who am I?").await.unwrap();
        stream.shutdown().await.unwrap();
        let mut echoed = Vec::new();
        within(
            "echo through the tunnel across namespaces",
            stream.read_to_end(&mut echoed),
        )
        .await
        .unwrap();
        let peer = within("the application's accept", app_task).await.unwrap();
        (peer, echoed)
    });
    println!(
        "observed: application accepted a connection from {peer_seen}; client got {:?}",
        String::from_utf8_lossy(&echoed)
    );
    assert_eq!(echoed, b"who am I?");
    assert_eq!(
        peer_seen.ip().to_string(),
        "198.18.0.2",
        "the application must see the client pod's address"
    );
}
