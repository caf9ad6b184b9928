//! Authorization through the served binary. The full matrix (every route against every kind
//! of caller) runs in process (server/tests/api_inprocess.rs); here, its corners over a real
//! socket, so that the table and what `secretd` serves cannot drift apart.

use crate::harness::{Server, b64, http};

const URI: &str = "secret://neuro-compute/alice/s1";

#[test]
fn the_matrix_corners_over_a_socket() {
    let (srv, t) = Server::start_with_users(&["alice", "bob", "eve", "frank"]);
    let (alice, bob, eve, frank) = (&t[0], &t[1], &t[2], &t[3]);
    let body = format!(r#"{{"key":"s1","value":"{}"}}"#, b64("v"));
    let r = srv.post(alice, "/api/v1/secrets", &body);
    assert_eq!(r.status, 201, "{}", r.body);
    let grant = format!(r#"[{{"uri":"{URI}","action":"read"}}]"#);
    let r = srv.post(alice, "/api/v1/users/bob/permissions", &grant);
    assert_eq!(r.status, 201, "{}", r.body);
    let op = srv.admin_token();
    let id = frank.split('.').nth(1).unwrap();
    let path = format!("/api/v1/admin/tokens/{id}");
    assert_eq!(srv.delete(&op, &path).status, 204);

    let get = |tok: Option<&str>| http(&srv.addr, "GET", "/api/v1/secrets/alice/s1", tok, None);
    for (who, tok, want) in [
        ("owner", Some(alice.as_str()), 200),
        ("grantee", Some(bob.as_str()), 200),
        ("stranger", Some(eve.as_str()), 403),
        ("operator", Some(op.as_str()), 403),
        ("revoked", Some(frank.as_str()), 401),
        ("no token", None, 401),
        ("bad token", Some("nst.0123456789abcdef.00"), 401),
    ] {
        let r = get(tok).unwrap();
        assert_eq!(r.status, want, "GET secret as {who}: {}", r.body);
    }
    // A forbidden read names what is missing, and the denial is audited.
    let r = get(Some(eve)).unwrap();
    assert_eq!(r.json()["missing"][0]["uri"], URI);
    assert_eq!(r.json()["missing"][0]["action"], "read");
    srv.assert_audited(r#""actor":"user:eve","action":"secret.read","uri":"secret://neuro-compute/alice/s1","outcome":"denied""#);
}
