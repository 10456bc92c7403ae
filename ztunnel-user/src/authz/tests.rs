//! The truth table of Istio's L4 authorization, one row per behaviour.

use std::sync::Arc;

use super::*;
use crate::{
    config::{LocalConfig, parse},
    state::State,
};

const CLIENT: &str = "spiffe://cluster.local/ns/ns1/sa/sleep";

/// A connection from `identity` at `source` to the workload `ns2/echo` at `destination`.
fn connection(identity: Option<&str>, source: &str, destination: &str) -> ConnectionAttributes {
    let workload = serde_norway::from_str(
        "name: echo\nnamespace: ns2\nserviceAccount: echo\nauthorizationPolicies: [ns2/selected]\n",
    )
    .unwrap();
    ConnectionAttributes {
        source_identity: identity.map(|id| id.parse().unwrap()),
        source: source.parse().unwrap(),
        destination_workload: Arc::new(workload),
        destination: destination.parse().unwrap(),
    }
}

fn mtls() -> ConnectionAttributes {
    connection(Some(CLIENT), "198.18.1.10:40000", "198.18.2.10:8080")
}

/// A single-match policy from the YAML of one match (flow style).
fn policy(action: &str, scope: &str, namespace: &str, name: &str, rules: &str) -> Policy {
    serde_norway::from_str(&format!(
        "name: {name}\nnamespace: {namespace}\nscope: {scope}\naction: {action}\nrules: {rules}\n"
    ))
    .unwrap_or_else(|error| panic!("test policy {name} does not parse: {error}"))
}

fn one_match(action: &str, condition: &str) -> Policy {
    policy(
        action,
        "Global",
        "istio-system",
        "p",
        &format!("[[[{{{condition}}}]]]"),
    )
}

#[test]
fn each_match_field_and_its_not_form() {
    let plaintext = connection(None, "198.18.1.10:40000", "198.18.2.10:8080");
    let v6 = connection(Some(CLIENT), "[2001:db8::1]:40000", "[2001:db8::2]:8080");
    let rows: &[(&str, &ConnectionAttributes, bool)] = &[
        // namespaces (of the peer's identity)
        ("namespaces: [!Exact ns1]", &mtls(), true),
        ("namespaces: [!Exact ns3]", &mtls(), false),
        ("namespaces: [!Exact ns3, !Prefix ns]", &mtls(), true),
        ("namespaces: [!Presence []]", &mtls(), true),
        ("namespaces: [!Presence []]", &plaintext, false),
        ("notNamespaces: [!Exact ns1]", &mtls(), false),
        ("notNamespaces: [!Exact ns3]", &mtls(), true),
        ("notNamespaces: [!Exact ns1]", &plaintext, true),
        // service accounts
        (
            "serviceAccounts: [{namespace: ns1, serviceAccount: sleep}]",
            &mtls(),
            true,
        ),
        (
            "serviceAccounts: [{namespace: ns1, serviceAccount: other}]",
            &mtls(),
            false,
        ),
        (
            "serviceAccounts: [{namespace: ns9, serviceAccount: sleep}]",
            &mtls(),
            false,
        ),
        (
            "serviceAccounts: [{namespace: ns1, serviceAccount: sleep}]",
            &plaintext,
            false,
        ),
        (
            "notServiceAccounts: [{namespace: ns1, serviceAccount: sleep}]",
            &mtls(),
            false,
        ),
        (
            "notServiceAccounts: [{namespace: ns1, serviceAccount: other}]",
            &mtls(),
            true,
        ),
        (
            "notServiceAccounts: [{namespace: ns1, serviceAccount: sleep}]",
            &plaintext,
            true,
        ),
        // principals: exact, prefix, suffix, presence (without the spiffe:// scheme)
        (
            "principals: [!Exact cluster.local/ns/ns1/sa/sleep]",
            &mtls(),
            true,
        ),
        (
            "principals: [!Exact spiffe://cluster.local/ns/ns1/sa/sleep]",
            &mtls(),
            false,
        ),
        (
            "principals: [!Exact cluster.local/ns/ns1/sa/other]",
            &mtls(),
            false,
        ),
        ("principals: [!Prefix cluster.local/ns/ns1/]", &mtls(), true),
        (
            "principals: [!Prefix cluster.local/ns/ns2/]",
            &mtls(),
            false,
        ),
        ("principals: [!Suffix /sa/sleep]", &mtls(), true),
        ("principals: [!Suffix /sa/other]", &mtls(), false),
        ("principals: [!Presence []]", &mtls(), true),
        ("principals: [!Presence []]", &plaintext, false),
        ("principals: [!Prefix \"\"]", &plaintext, false),
        ("principals: [!Prefix \"\"]", &mtls(), true),
        ("namespaces: [!Prefix \"\"]", &plaintext, true),
        ("notPrincipals: [!Suffix /sa/sleep]", &mtls(), false),
        ("notPrincipals: [!Suffix /sa/other]", &mtls(), true),
        ("notPrincipals: [!Presence []]", &plaintext, true),
        ("notPrincipals: [!Presence []]", &mtls(), false),
        // source IPs
        ("sourceIps: [198.18.1.0/24]", &mtls(), true),
        ("sourceIps: [198.18.1.10/32]", &mtls(), true),
        ("sourceIps: [198.18.9.0/24]", &mtls(), false),
        ("sourceIps: [198.18.9.0/24, 198.18.0.0/15]", &mtls(), true),
        ("sourceIps: [\"2001:db8::/64\"]", &v6, true),
        ("sourceIps: [\"2001:db8::/64\"]", &mtls(), false),
        ("sourceIps: [198.18.0.0/15]", &v6, false),
        ("notSourceIps: [198.18.1.0/24]", &mtls(), false),
        ("notSourceIps: [198.18.9.0/24]", &mtls(), true),
        // destination IPs
        ("destinationIps: [198.18.2.0/24]", &mtls(), true),
        ("destinationIps: [198.18.1.0/24]", &mtls(), false),
        ("destinationIps: [\"2001:db8::2/128\"]", &v6, true),
        ("notDestinationIps: [198.18.2.0/24]", &mtls(), false),
        ("notDestinationIps: [198.18.1.0/24]", &mtls(), true),
        // destination ports
        ("destinationPorts: [8080]", &mtls(), true),
        ("destinationPorts: [80, 443]", &mtls(), false),
        ("notDestinationPorts: [8080]", &mtls(), false),
        ("notDestinationPorts: [9999]", &mtls(), true),
        // within one match every field must hold
        (
            "namespaces: [!Exact ns1], destinationPorts: [8080]",
            &mtls(),
            true,
        ),
        (
            "namespaces: [!Exact ns1], destinationPorts: [9090]",
            &mtls(),
            false,
        ),
        (
            "sourceIps: [198.18.0.0/15], notSourceIps: [198.18.1.0/24]",
            &mtls(),
            false,
        ),
        (
            "principals: [!Presence []], notDestinationPorts: [22]",
            &mtls(),
            true,
        ),
    ];
    for (condition, connection, expected) in rows {
        let peer = Peer::from(*connection);
        let matched = one_match("Allow", condition).matches(&peer);
        assert_eq!(
            matched,
            *expected,
            "{{{condition}}} against {:?} {} -> {}",
            connection.source_identity.as_ref().map(ToString::to_string),
            connection.source,
            connection.destination
        );
    }
}

#[test]
fn rules_clauses_and_matches_combine_as_istio_defines() {
    let port = |port: u16| format!("{{destinationPorts: [{port}]}}");
    let (yes, no) = (port(8080), port(1));
    let rows: Vec<(String, bool)> = vec![
        ("[]".into(), false),                    // no rules: never matches
        ("[[]]".into(), true),                   // a rule with no clauses
        ("[[[]]]".into(), true),                 // an empty clause
        ("[[[{}]]]".into(), false),              // an empty match sets nothing
        (format!("[[[{no}], [{yes}]]]"), false), // clauses: all must hold
        (format!("[[[{yes}], [{yes}]]]"), true),
        (format!("[[[{no}, {yes}]]]"), true), // matches in a clause: any
        (format!("[[[{no}, {no}]]]"), false),
        (format!("[[[{no}]], [[{yes}]]]"), true), // rules: any
        (format!("[[[{no}]], [[{no}]]]"), false),
        (format!("[[[{{}}, {yes}]]]"), true), // an empty match is skipped
    ];
    let peer_connection = mtls();
    let peer = Peer::from(&peer_connection);
    for (rules, expected) in rows {
        let policy = policy("Allow", "Global", "istio-system", "p", &rules);
        assert_eq!(policy.matches(&peer), expected, "rules {rules}");
    }
}

#[test]
fn decision_deny_wins_and_no_allow_means_allow() {
    let matching = "[[[{destinationPorts: [8080]}]]]";
    let other = "[[[{destinationPorts: [1]}]]]";
    let denied_by = |name: &str| {
        Decision::Deny(DenyReason::DeniedBy {
            policy: format!("istio-system/{name}"),
        })
    };
    // (deny policies, allow policies, verdict)
    let rows: Vec<(Vec<&str>, Vec<&str>, Decision)> = vec![
        (vec![], vec![], Decision::Allow),
        (vec![other], vec![], Decision::Allow),
        (vec![matching], vec![], denied_by("deny-0")),
        (vec![], vec![other], Decision::Deny(DenyReason::NotAllowed)),
        (vec![], vec![matching], Decision::Allow),
        (vec![], vec![other, matching], Decision::Allow),
        (
            vec![other],
            vec![other],
            Decision::Deny(DenyReason::NotAllowed),
        ),
        (vec![other], vec![matching], Decision::Allow),
        (vec![matching], vec![matching], denied_by("deny-0")),
        (vec![matching], vec![other], denied_by("deny-0")),
        (vec![other, matching], vec![matching], denied_by("deny-1")),
    ];
    for (denies, allows, expected) in rows {
        let policies: Vec<Policy> = denies
            .iter()
            .enumerate()
            .map(|(index, rules)| {
                policy(
                    "Deny",
                    "Global",
                    "istio-system",
                    &format!("deny-{index}"),
                    rules,
                )
            })
            .chain(allows.iter().enumerate().map(|(index, rules)| {
                policy(
                    "Allow",
                    "Global",
                    "istio-system",
                    &format!("allow-{index}"),
                    rules,
                )
            }))
            .collect();
        assert_eq!(
            evaluate(&policies, &mtls()),
            expected,
            "deny {denies:?} allow {allows:?}"
        );
    }
}

#[test]
fn dry_run_policies_are_never_enforced() {
    let mut deny_all = policy("Deny", "Global", "istio-system", "deny-all", "[[]]");
    deny_all.dry_run = true;
    let mut allow_nothing = policy("Allow", "Global", "istio-system", "allow-nothing", "[]");
    allow_nothing.dry_run = true;
    assert_eq!(
        evaluate([&deny_all, &allow_nothing], &mtls()),
        Decision::Allow
    );
}

#[test]
fn scope_decides_which_workloads_a_policy_applies_to() {
    let deny_all = "[[]]";
    // (scope, policy namespace, policy name, applies to ns2/echo which names ns2/selected)
    let rows = [
        ("Global", "istio-system", "g", true),
        ("Namespace", "ns2", "n", true),
        ("Namespace", "ns1", "n", false),
        ("WorkloadSelector", "ns2", "selected", true),
        ("WorkloadSelector", "ns2", "not-selected", false),
    ];
    for (scope, namespace, name, applies) in rows {
        let config = LocalConfig {
            policies: vec![policy("Deny", scope, namespace, name, deny_all)],
            ..Default::default()
        };
        let state = State::from_config(config).unwrap();
        let connection = mtls();
        let decision = evaluate(
            state.policies_for(&connection.destination_workload),
            &connection,
        );
        assert_eq!(
            !decision.is_allowed(),
            applies,
            "{scope} policy {namespace}/{name}"
        );
    }
}

#[test]
fn authorizer_follows_the_current_state() {
    let text = "policies:\n- {name: only-ns3, namespace: ns2, scope: Namespace, action: Allow, rules: [[[{namespaces: [!Exact ns3]}]]]}\n";
    let handle = StateHandle::new(State::from_config(parse(text, "t").unwrap()).unwrap());
    let authorizer = Authorizer::new(handle.clone());
    assert_eq!(
        authorizer.evaluate(&mtls()),
        Decision::Deny(DenyReason::NotAllowed)
    );
    handle.replace(State::default());
    assert_eq!(authorizer.evaluate(&mtls()), Decision::Allow);
}
