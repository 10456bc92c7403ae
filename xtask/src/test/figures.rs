//! What each end-to-end test's `figures:` lines are expected to show, printed above them at the
//! end of `cargo xtask test`, so that a line such as `refused=70 failed=70` reads as the
//! success it is. The tests assert these; the figures themselves are for the reader.

/// (test function name, what its figures should show).
const EXPECTATIONS: &[(&str, &str)] = &[
    (
        "a_crashed_ztunnel_fails_closed_on_its_own_node_only",
        "node 1's ztunnel is SIGKILLed: every node-1 connection after the kill is refused \
         (failed = refused = sent is the expected result), node 2 → node 1 fails without \
         hanging (hung=0), node 2's own probe is all ok, no plaintext or non-HBONE TCP on the \
         underlay; then fail-open: node 1's pods go direct (plaintext_seen=true), all ok",
    ),
    (
        "a_rolling_upgrade_of_ztunnel_loses_no_request_and_resets_no_connection",
        "ok = requests and resets=0 across the surge upgrade; timings are for the reader",
    ),
    (
        "a_restarted_ztunnel_adopts_capture_and_serves_at_once",
        "refused while down is expected (fail-closed); after ready nothing fails \
         (failed_after_ready 0 both ways), hooks adopted in place",
    ),
    (
        "rotating_every_certificate_under_open_tunnels_drops_nothing",
        "ok = requests and resets=0 while every certificate is replaced",
    ),
    (
        "waypoint_replicas_carry_all_traffic_and_survive_a_sigkill",
        "in-flight requests on the killed replica may fail; failed_new_connections=0 and \
         retries ≥ 1",
    ),
    (
        "a_waypoint_replica_that_stops_answering_is_routed_around",
        "failed=0 and at least one response_timeout retry; the stall shows in the timings",
    ),
    (
        "ipv6_pod_to_pod_across_nodes_is_captured_and_tunnelled_in_hbone_over_ipv6",
        "iperf3 moved data over IPv6 HBONE, HBONE packets on the underlay, redirect and pass \
         counters grew; timings are for the reader",
    ),
];

/// What the figures of `test` (a test name, possibly with a module path) should show.
pub fn expectation(test: &str) -> &'static str {
    let name = test.rsplit("::").next().unwrap_or(test);
    EXPECTATIONS
        .iter()
        .find(|(known, _)| *known == name)
        .map_or(
            "timings and counts for the reader; the test's assertions decide pass or fail",
            |(_, expected)| expected,
        )
}
