use super::*;

fn workload(name: &str, namespace: &str) -> Workload {
    serde_norway::from_str(&format!(
        "name: {name}\nnamespace: {namespace}\nserviceAccount: {name}\ncanonicalName: {name}-app\ncanonicalRevision: v1\nclusterId: Kubernetes\n"
    ))
    .unwrap()
}

#[test]
fn exposition_has_istio_names_and_labels() {
    let metrics = Metrics::new();
    let client = workload("sleep", "ns1");
    let server = workload("echo", "ns2");
    let labels = ConnectionLabels::new(Reporter::Destination)
        .with_source(&client, Some(&client.identity()))
        .with_destination(&server)
        .with_security(SecurityPolicy::MutualTls);
    metrics.connection_opened(&labels).closed(10, 20);
    let text = metrics.encode().unwrap();
    for name in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
    ] {
        assert!(
            text.contains(&format!("{name}{{")),
            "{name} missing from:\n{text}"
        );
    }
    for label in [
        "reporter=\"destination\"",
        "source_workload=\"sleep\"",
        "source_workload_namespace=\"ns1\"",
        "source_principal=\"spiffe://cluster.local/ns/ns1/sa/sleep\"",
        "source_app=\"sleep-app\"",
        "source_version=\"v1\"",
        "source_cluster=\"Kubernetes\"",
        "destination_workload=\"echo\"",
        "destination_workload_namespace=\"ns2\"",
        "destination_principal=\"spiffe://cluster.local/ns/ns2/sa/echo\"",
        "destination_app=\"echo-app\"",
        "destination_version=\"v1\"",
        "destination_cluster=\"Kubernetes\"",
        "destination_service=\"unknown\"",
        "destination_service_namespace=\"unknown\"",
        "destination_service_name=\"unknown\"",
        "request_protocol=\"tcp\"",
        "response_flags=\"-\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(text.contains(label), "{label} missing from:\n{text}");
    }
    assert!(
        text.contains("istio_tcp_sent_bytes_total{") && text.contains("} 10\n"),
        "{text}"
    );
    assert!(text.contains("} 20\n"), "{text}");
}

#[test]
fn denials_and_identity_failures_are_counted() {
    let metrics = Metrics::new();
    metrics.denied(&ConnectionLabels::new(Reporter::Destination));
    metrics.identity_failure(Reporter::Destination, "wrong_trust_domain");
    metrics.identity_failure(Reporter::Destination, "wrong_trust_domain");
    metrics.identity_failure(Reporter::Source, "tls_error");
    metrics.config_reload(false);
    let text = metrics.encode().unwrap();
    assert!(text.contains("ztunnel_connections_denied_total{"), "{text}");
    assert!(text.contains("response_flags=\"DENY\""), "{text}");
    assert!(
        text.contains("istio_tcp_connections_failed_total{"),
        "{text}"
    );
    assert!(
        text.contains(
            "ztunnel_identity_failures_total{reporter=\"destination\",reason=\"wrong_trust_domain\"} 2"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "ztunnel_identity_failures_total{reporter=\"source\",reason=\"tls_error\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("ztunnel_config_reloads_total{result=\"rejected\"} 1"),
        "{text}"
    );
}

#[test]
fn limit_refusals_and_idle_closes_are_exported() {
    let metrics = Metrics::new();
    metrics.tunnel_refused("per_pod_limit");
    metrics.tunnel_refused("per_pod_limit");
    metrics.idle_timeout(Reporter::Source);
    let text = metrics.encode().unwrap();
    assert!(
        text.contains("ztunnel_tunnels_refused_total{reason=\"per_pod_limit\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("ztunnel_idle_timeouts_total{reporter=\"source\"} 1"),
        "{text}"
    );
}

#[test]
fn every_family_is_exported_before_the_first_connection() {
    let metrics = Metrics::new();
    let fresh = metrics.encode().unwrap();
    println!("{fresh}");
    for (prefix, (name, _)) in FAMILIES {
        let described = format!("# TYPE {prefix}_{name} counter");
        assert_eq!(fresh.matches(&described).count(), 1, "{described:?}");
    }
    for zero in [
        "ztunnel_idle_timeouts_total{reporter=\"source\"} 0",
        "ztunnel_tunnels_refused_total{reason=\"per_pod_limit\"} 0",
        "ztunnel_config_reloads_total{result=\"rejected\"} 0",
        "ztunnel_identity_failures_total{reporter=\"destination\",reason=\"unknown_issuer\"} 0",
    ] {
        assert!(fresh.contains(zero), "{zero:?} missing");
    }
    assert!(fresh.trim_end().ends_with("# EOF"));

    let labels = ConnectionLabels::new(Reporter::Source);
    metrics.connection_opened(&labels).closed(1, 2);
    let after = metrics.encode().unwrap();
    let described = "# TYPE istio_tcp_connections_opened counter";
    println!(
        "after one connection: {} time(s) {described:?}",
        after.matches(described).count()
    );
    assert_eq!(after.matches(described).count(), 1);
}

#[test]
fn keepalive_closes_are_exported_by_side_and_reason() {
    let metrics = Metrics::new();
    metrics.hbone_connection_closed(Reporter::Destination, "ping_timeout");
    metrics.hbone_connection_closed(Reporter::Destination, "no_stream");
    metrics.hbone_connection_closed(Reporter::Source, "ping_timeout");
    let text = metrics.encode().unwrap();
    for series in [
        "ztunnel_hbone_connections_closed_total{reporter=\"destination\",reason=\"ping_timeout\"} 1",
        "ztunnel_hbone_connections_closed_total{reporter=\"destination\",reason=\"no_stream\"} 1",
        "ztunnel_hbone_connections_closed_total{reporter=\"source\",reason=\"ping_timeout\"} 1",
    ] {
        assert!(text.contains(series), "{series} in {text}");
    }
}
