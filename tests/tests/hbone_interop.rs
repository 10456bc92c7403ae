//! Interop with an independent HBONE implementation that is not Rust: Python's `ssl` module
//! and the `h2` package (installed into a venv under target/ by this test), acting as HBONE
//! client against our inbound listener and as HBONE server for our outbound side.

mod hbone_support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
};

use hbone_support::{Node, free_port, id, loopback, scratch_dir, within, write_workload_pem};
use serde_json::Value;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    process::Command,
};
use ztunnel::proxy::{WorkloadInfo, directory::StaticDirectory, metrics::HandshakeSide};

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// A Python with `h2` installed: a venv under target/, created on first use.
fn python() -> PathBuf {
    // Both tests of this file run in parallel: create the venv once.
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(prepare_python).clone()
}

fn prepare_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/interop-venv");
    let python = venv.join("bin/python");
    let ready = std::process::Command::new(&python)
        .args(["-c", "import h2"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let base = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let status = std::process::Command::new(&base)
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .unwrap_or_else(|error| {
                panic!("cannot run {base} -m venv (install python3-venv): {error}")
            });
        assert!(status.success(), "{base} -m venv {} failed", venv.display());
        let status = std::process::Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(interop_dir().join("requirements.txt"))
            .status()
            .expect("run pip");
        assert!(
            status.success(),
            "pip install -r tests/interop/requirements.txt failed (PyPI reachable?)"
        );
    }
    python
}

async fn run_client(args: &[&str]) -> Value {
    let output = within(
        "python HBONE client",
        Command::new(python())
            .arg(interop_dir().join("hbone_client.py"))
            .args(args)
            .current_dir(interop_dir())
            .output(),
    )
    .await
    .expect("run hbone_client.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().unwrap_or_else(|| {
        panic!(
            "hbone_client.py printed nothing; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    serde_json::from_str(line).unwrap_or_else(|error| panic!("bad JSON {line:?}: {error}"))
}

/// One echo per connection: reads to EOF, writes it back, closes.
async fn echo_app(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut data = Vec::new();
            if stream.read_to_end(&mut data).await.is_ok() {
                let _ = stream.write_all(&data).await;
                let _ = stream.shutdown().await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_h2_client_against_our_inbound() {
    let denied = id("py", "denied");
    let node = Node::start_with(21, |directory| directory.deny(denied.clone())).await;
    let dir = scratch_dir("interop-inbound");
    let ca = dir.join("root-cert.pem");
    std::fs::write(&ca, node.authority.root_pem()).unwrap();
    let (cert, key) = write_workload_pem(&node.authority, &dir, "client", &id("py", "client"));
    let (denied_cert, denied_key) = write_workload_pem(&node.authority, &dir, "denied", &denied);
    let (foreign_cert, foreign_key) = write_workload_pem(
        &node.authority,
        &dir,
        "foreign",
        &ztunnel::identity::SpiffeId::new("other.domain", "py", "client"),
    );
    let app = node.app_listener().await;
    let app_address = app.local_addr().unwrap();
    tokio::spawn(echo_app(app));
    let closed_port = TcpListener::bind(SocketAddr::new(loopback(21, 2), 0))
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let server_san = node.server.workload.identity.to_string();
    let connect = node.hbone_address.to_string();
    let paths = |c: &Path, k: &Path| {
        (
            c.to_str().unwrap().to_owned(),
            k.to_str().unwrap().to_owned(),
        )
    };
    let (cert, key) = paths(&cert, &key);
    let (denied_cert, denied_key) = paths(&denied_cert, &denied_key);
    let (foreign_cert, foreign_key) = paths(&foreign_cert, &foreign_key);
    println!(
        "set up: our HBONE server {connect} ({server_san}), app {app_address}, closed port {closed_port}"
    );

    let base = |authority: String, cert: &str, key: &str| -> Vec<String> {
        [
            "--connect",
            &connect,
            "--authority",
            &authority,
            "--ca",
            ca.to_str().unwrap(),
            "--cert",
            cert,
            "--key",
            key,
            "--expect-san",
            &server_san,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_client(&refs).await
    };

    let ok = run(base(app_address.to_string(), &cert, &key)).await;
    println!("observed 200 case: {ok}");
    let wrong_pod = run(base("127.0.21.99:80".to_owned(), &cert, &key)).await;
    println!("observed authority of another pod: {wrong_pod}");
    let mut get = base(app_address.to_string(), &cert, &key);
    get.extend(["--method".to_owned(), "GET".to_owned()]);
    let get = run(get).await;
    println!("observed GET: {get}");
    let denied_answer = run(base(app_address.to_string(), &denied_cert, &denied_key)).await;
    println!("observed denied identity: {denied_answer}");
    let refused = run(base(closed_port.to_string(), &cert, &key)).await;
    println!("observed closed upstream port: {refused}");
    let foreign = run(base(app_address.to_string(), &foreign_cert, &foreign_key)).await;
    println!("observed client from trust domain other.domain: {foreign}");
    let mut tls12 = base(app_address.to_string(), &cert, &key);
    tls12.push("--tls12".to_owned());
    let tls12 = run(tls12).await;
    println!("observed client offering only TLS 1.2: {tls12}");

    assert_eq!(ok["handshake"], "ok");
    assert_eq!(ok["tls_version"], "TLSv1.3");
    assert_eq!(ok["alpn"], "h2");
    assert_eq!(ok["status"], 200);
    assert_eq!(
        ok["body"], "ping",
        "payload must come back from the echo app"
    );
    assert_eq!(wrong_pod["status"], 400);
    assert_eq!(get["status"], 400);
    assert_eq!(denied_answer["status"], 401);
    assert_eq!(refused["status"], 503);
    assert_eq!(
        foreign["handshake"], "failed",
        "a client from another trust domain must be refused"
    );
    assert_eq!(tls12["handshake"], "failed", "TLS 1.2 must be refused");
    let _ = std::fs::remove_dir_all(&dir);
    let metrics = &node.context.metrics;
    hbone_support::wait_until(
        "inbound failure counters for other.domain and TLS 1.2",
        || {
            metrics.handshake_failures(HandshakeSide::Inbound, "wrong_trust_domain") == 1
                && metrics.handshake_failures(HandshakeSide::Inbound, "tls_version_not_1_3") == 1
        },
    )
    .await;
}

/// Starts `hbone_server.py` on `listen` with `name`'s certificate; waits until it listens.
async fn python_server(listen: SocketAddr, dir: &Path, name: &str) -> tokio::process::Child {
    let mut child = Command::new(python())
        .arg(interop_dir().join("hbone_server.py"))
        .args(["--listen", &listen.to_string(), "--ca"])
        .arg(dir.join("root-cert.pem"))
        .arg("--cert")
        .arg(dir.join(format!("{name}-cert.pem")))
        .arg("--key")
        .arg(dir.join(format!("{name}-key.pem")))
        .current_dir(interop_dir())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start hbone_server.py");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = within("python server to listen", lines.next_line())
        .await
        .expect("read")
        .expect("a line");
    assert!(first.contains("listening"), "unexpected first line {first}");
    // Every later line is a report: print it and pass it to the test through LINES.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            println!("python server {listen}: {line}");
            let _ = LINES.send(line);
        }
    });
    child
}

/// Reports of the python servers, in order.
static LINES: std::sync::LazyLock<tokio::sync::broadcast::Sender<String>> =
    std::sync::LazyLock::new(|| tokio::sync::broadcast::channel(256).0);

async fn next_report(
    receiver: &mut tokio::sync::broadcast::Receiver<String>,
    matching: &str,
) -> Value {
    loop {
        let line = within(
            &format!("python server report containing {matching}"),
            receiver.recv(),
        )
        .await
        .expect("line");
        if line.contains(matching) {
            return serde_json::from_str(&line).expect("JSON");
        }
    }
}

async fn through(node: &Node, destination: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let outbound = node.outbound_to(destination).await;
    let mut client = TcpStream::connect(outbound)
        .await
        .expect("connect outbound");
    client.write_all(payload).await.expect("write");
    client.shutdown().await.expect("shutdown");
    let mut answer = Vec::new();
    let _ = within(
        "outbound connection to end",
        client.read_to_end(&mut answer),
    )
    .await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_outbound_against_python_h2_server() {
    let py_server = id("default", "py-server");
    let good = WorkloadInfo::new(py_server.clone(), loopback(22, 3));
    let impostor = WorkloadInfo::new(py_server.clone(), loopback(22, 4));
    // Ports chosen free on the spot: 15008 on the host may be taken by another suite.
    let good_address = SocketAddr::new(loopback(22, 3), free_port(loopback(22, 3)));
    let impostor_address = SocketAddr::new(loopback(22, 4), free_port(loopback(22, 4)));
    let node = Node::start_with(22, |directory: StaticDirectory| {
        directory
            .with_hbone_workload_on_port(good.clone(), good_address.port())
            .with_hbone_workload_on_port(impostor.clone(), impostor_address.port())
    })
    .await;
    let dir = scratch_dir("interop-outbound");
    std::fs::write(dir.join("root-cert.pem"), node.authority.root_pem()).unwrap();
    write_workload_pem(&node.authority, &dir, "py-server", &py_server);
    write_workload_pem(
        &node.authority,
        &dir,
        "impostor",
        &id("default", "impostor"),
    );
    let mut reports = LINES.subscribe();
    let _good = python_server(good_address, &dir, "py-server").await;
    let _bad = python_server(impostor_address, &dir, "impostor").await;
    println!(
        "set up: python HBONE servers on {good_address} ({py_server}) and {impostor_address} (presenting default/impostor, expected {py_server})"
    );

    let echoed = through(&node, "127.0.22.3:8080".parse().unwrap(), b"hello interop").await;
    let stream = next_report(&mut reports, "\"authority\": \"127.0.22.3:8080\"").await;
    println!(
        "observed: echoed {:?}; python saw {stream}",
        String::from_utf8_lossy(&echoed)
    );
    let refused = through(&node, "127.0.22.3:503".parse().unwrap(), b"x").await;
    let refused_report = next_report(&mut reports, "127.0.22.3:503").await;
    let denied = through(&node, "127.0.22.3:401".parse().unwrap(), b"x").await;
    let denied_report = next_report(&mut reports, "127.0.22.3:401").await;
    println!(
        "observed: 503 case got {} bytes, python {refused_report}; 401 case got {} bytes, python {denied_report}",
        refused.len(),
        denied.len()
    );
    let impostor_answer = through(&node, "127.0.22.4:8080".parse().unwrap(), b"secret").await;
    let failures = node
        .context
        .metrics
        .handshake_failures(HandshakeSide::Outbound, "unexpected_identity");
    println!(
        "observed: impostor got {} bytes back; outbound unexpected_identity failures {failures}",
        impostor_answer.len()
    );

    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(echoed, b"hello interop");
    assert_eq!(stream["tls_version"], "TLSv1.3");
    assert_eq!(stream["alpn"], "h2");
    assert_eq!(
        stream["client_sans"][0],
        node.client.workload.identity.to_string()
    );
    assert_eq!(stream["method"], "CONNECT");
    assert!(
        stream["forwarded"]
            .as_str()
            .is_some_and(|f| f.starts_with("for=\"127.0.22.1:")),
        "forwarded header: {}",
        stream["forwarded"]
    );
    assert!(
        stream["traceparent"]
            .as_str()
            .is_some_and(|t| t.len() == 55 && t.starts_with("00-"))
    );
    assert_eq!(stream["echoed"], 13);
    assert_eq!(refused_report["status"], 503);
    assert!(refused.is_empty());
    assert_eq!(denied_report["status"], 401);
    assert!(denied.is_empty());
    assert!(
        impostor_answer.is_empty(),
        "nothing may flow to a server with the wrong identity"
    );
    assert_eq!(failures, 1);
}
