//! Admin tokens (format 6): created once per name, found by the hash of their secret, revoked
//! for good, and carried by snapshots.

mod common;

use common::Fixture;
use skein_queue::{
    Request, Response, TokenCommand, TokenOutcome, TokenRecord, TokenScope, TOKENS_FORMAT,
};

fn token(name: &str, scope: TokenScope, hash: u8) -> TokenRecord {
    TokenRecord {
        name: name.into(),
        scope,
        secret_sha256: vec![hash; 32],
        created_ms: 1_000,
    }
}

async fn run(s: &mut Fixture, cmd: TokenCommand) -> TokenOutcome {
    match s.apply(Request::Token(cmd)).await {
        Response::Token(o) => o,
        r => panic!("{r:?}"),
    }
}

#[tokio::test]
async fn tokens_are_created_once_found_by_hash_revoked_and_travel_in_snapshots() {
    let mut s = Fixture::new();
    s.apply(Request::SetFormat {
        version: TOKENS_FORMAT,
    })
    .await;
    let viewer = token("viewer", TokenScope::Read, 1);
    let root = token("root", TokenScope::Admin, 2);
    assert_eq!(
        run(&mut s, TokenCommand::Create(viewer.clone())).await,
        TokenOutcome::Done
    );
    assert_eq!(
        run(&mut s, TokenCommand::Create(root.clone())).await,
        TokenOutcome::Done
    );
    // A name is never reused while its token lives, whatever the secret.
    assert_eq!(
        run(
            &mut s,
            TokenCommand::Create(token("root", TokenScope::Read, 3))
        )
        .await,
        TokenOutcome::Exists
    );
    assert_eq!(
        s.reader.tokens().unwrap(),
        vec![root.clone(), viewer.clone()]
    );
    assert_eq!(
        s.reader.token_by_hash(&[1; 32]).unwrap(),
        Some(viewer.clone())
    );
    assert_eq!(s.reader.token_by_hash(&[3; 32]).unwrap(), None);

    let revoke = |name: &str| TokenCommand::Revoke { name: name.into() };
    assert_eq!(run(&mut s, revoke("root")).await, TokenOutcome::Done);
    assert_eq!(run(&mut s, revoke("root")).await, TokenOutcome::NotFound);
    assert_eq!(s.reader.token_by_hash(&[2; 32]).unwrap(), None);

    let t = s.copy_by_snapshot().await;
    assert_eq!(t.reader.tokens().unwrap(), vec![viewer]);
    assert_eq!(
        t.reader.state_digest().unwrap(),
        s.reader.state_digest().unwrap()
    );
}
