//! 8 `virtfw apply` processes of disjoint transactions at once in one namespace: the state lock
//! serialises them; all plans are stored, all removable, the ruleset is clean at the end.

mod common;
use common::*;

fn concurrent(env: &Env, txs: Vec<(String, String)>) {
    let before = env.snapshot();
    let children: Vec<_> = txs
        .iter()
        .map(|(name, xml)| {
            let f = env.write(&format!("{name}.xml"), xml);
            env.cmd(&["apply", path_of(&f)])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let o = env.run(&["--json", "list"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["plans"].as_array().unwrap().len(), txs.len(), "{v}");
    let o = env.run(&["verify"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let children: Vec<_> = txs
        .iter()
        .map(|(name, _)| {
            env.cmd(&["remove", name])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    assert_eq!(env.snapshot(), before);
}

#[test]
fn eight_concurrent_nft_applies() {
    let env = Env::new("vfw-conc-nft");
    concurrent(
        &env,
        (0..8)
            .map(|i| (format!("n{i}"), nft_tx(&format!("n{i}"), &format!("t{i}"))))
            .collect(),
    );
}

#[test]
fn eight_concurrent_iptables_applies() {
    let env = Env::new("vfw-conc-ipt");
    env.prime_iptables();
    concurrent(
        &env,
        (0..8)
            .map(|i| (format!("i{i}"), ipt_tx(&format!("i{i}"), 10 + i as u8)))
            .collect(),
    );
}
