//! Integrity of stored routing data, and rotation and revocation that do not depend on old secrets: a key whose row was
//! pointed elsewhere is never sent; the master key rotates offline; peppers rotate without reissuing tokens; revocation
//! works with the master key version gone; key sets stored in the older format keep working and are upgraded on use.

use std::collections::HashMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use reliablegpt::config::{Keyring, env};
use reliablegpt::mock_upstream::MockUpstream;
use reliablegpt::vault::crypto::{Purpose, aad};
use reliablegpt::vault::token::Peppers;
use reliablegpt::vault::{Token, Vault};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{GatewayTest, canary_key, error_of, random_secret, spawn_gateway, token_of};

fn ring(name: &'static str, vars: &HashMap<String, String>) -> Keyring {
    Keyring::parse(name, &vars[name]).unwrap()
}

async fn one(pool: &sqlx::PgPool, sql: &str, id: &str) -> Value {
    sqlx::query_scalar::<_, Value>(&format!("SELECT to_jsonb(x) FROM ({sql}) x"))
        .bind(id.parse::<Uuid>().unwrap())
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_whose_target_was_changed_in_the_database_is_never_sent_there() {
    let gw = spawn_gateway().await;
    let attacker = MockUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (k1, k2) = (canary_key(), canary_key());
    let created =
        gw.app.create_key_set(json!([k1, {"provider": "openai", "key": k2, "base_url": gw.mock.base_url()}])).await;
    let token = token_of(&created);

    // Someone with write access to the database points both keys at a host they control (also allowlisted here).
    let done = sqlx::query("UPDATE vault_provider_keys SET target = jsonb_build_object('base_url', $1::text)")
        .bind(attacker.base_url())
        .execute(&gw.app.pool)
        .await
        .unwrap();
    assert_eq!(done.rows_affected(), 2);

    let answer = gw.chat(&token, "gpt-4o").await;
    assert_ne!(answer.status, 200, "{}", answer.text);
    assert!(attacker.requests().is_empty(), "a key was sent to the rewritten host");
    assert!(gw.mock.requests().is_empty());
    for key in [&k1, &k2] {
        assert!(!answer.text.contains(key.as_str()));
    }

    // The owner sees both keys in error.
    let listed: Value = gw.app.get_keys(&token).await.json().await.unwrap();
    for key in listed["keys"].as_array().unwrap() {
        assert_eq!(key["status"], "error", "{listed}");
        assert!(key["last_error"].as_str().unwrap().contains("integrity"), "{listed}");
    }

    // Put back (on a replica that has not cached the opened set), the first key serves again: the refusal came from
    // the binding, nothing else.
    sqlx::query("UPDATE vault_provider_keys SET target = '{}' WHERE id = $1::uuid")
        .bind(created["keys"][0]["id"].as_str().unwrap())
        .execute(&gw.app.pool)
        .await
        .unwrap();
    let fresh = gw.app.sibling(|_| {}).await;
    let res = fresh.chat(&token, "gpt-4o").await;
    assert_eq!(res.status(), 200);
    assert_eq!(gw.keys_seen(), vec![k1]);
    assert!(attacker.requests().is_empty());
}

/// A key set exactly as the previous format stored it: token hash under pepper v1, the data key in one layer under
/// HKDF(salt = token, master key), the provider key sealed in a version-1 blob with AAD = set + key + purpose.
async fn store_legacy_key_set(gw: &GatewayTest, key: &str) -> (String, Uuid) {
    let master = *ring(env::MASTER_KEY, &gw.app.env).active().1.expose();
    let token = Token::generate();
    let (_, hash) = Peppers::new(&ring(env::TOKEN_PEPPER, &gw.app.env)).active(&token);
    let (set_id, key_id) = (Uuid::new_v4(), Uuid::new_v4());
    let seal_v1 = |key: &[u8; 32], plain: &[u8], aad: &[u8]| {
        let nonce: [u8; 12] = rand::random();
        let body = Aes256Gcm::new(key.into()).encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad }).unwrap();
        [&[1u8][..], &nonce, &body].concat()
    };
    let mut kek = [0u8; 32];
    let mut info = b"reliablegpt/v1/kek".to_vec();
    info.extend_from_slice(set_id.as_bytes());
    hkdf::Hkdf::<sha2::Sha256>::new(Some(token.expose().as_bytes()), &master).expand(&info, &mut kek).unwrap();
    let dek: [u8; 32] = rand::random();
    let wrapped = seal_v1(&kek, &dek, &aad(Purpose::DataKey, set_id, set_id));
    let ciphertext = seal_v1(&dek, key.as_bytes(), &aad(Purpose::ProviderKey, set_id, key_id));
    sqlx::query(
        "INSERT INTO vault_key_sets (id, token_hash, wrapped_dek, master_key_version, user_email, policy) \
         VALUES ($1, $2, $3, 1, 'old@example.com', '{}')",
    )
    .bind(set_id)
    .bind(hash.0.to_vec())
    .bind(wrapped)
    .execute(&gw.app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO vault_provider_keys (id, key_set_id, position, provider, ciphertext, masked) \
         VALUES ($1, $2, 0, 'openai', $3, 'sk-...old')",
    )
    .bind(key_id)
    .bind(set_id)
    .bind(ciphertext)
    .execute(&gw.app.pool)
    .await
    .unwrap();
    (token.expose().to_owned(), set_id)
}

#[tokio::test]
async fn key_sets_in_the_older_format_keep_working_and_are_upgraded_on_use() {
    let gw = spawn_gateway().await;
    let key = canary_key();
    let (token, set_id) = store_legacy_key_set(&gw, &key).await;
    let id = set_id.to_string();
    let row_sql = "SELECT s.format, k.ciphertext AS ct FROM vault_key_sets s \
                   JOIN vault_provider_keys k ON k.key_set_id = s.id WHERE s.id = $1";
    let before = one(&gw.app.pool, row_sql, &id).await;
    assert_eq!(before["format"], 1);

    let answer = gw.chat(&token, "gpt-4o").await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    assert_eq!(gw.keys_seen(), vec![key.clone()]);
    let after = one(&gw.app.pool, row_sql, &id).await;
    assert_eq!(after["format"], 2, "not upgraded");
    assert!(after["ct"].as_str().unwrap().starts_with("\\x02"), "provider key not re-sealed: {after}");

    // Upgraded, its key is bound to its target like any other.
    sqlx::query(
        "UPDATE vault_provider_keys SET target = '{\"base_url\": \"http://127.0.0.1:9/v1\"}' WHERE key_set_id = $1",
    )
    .bind(set_id)
    .execute(&gw.app.pool)
    .await
    .unwrap();
    let listed: Value = gw.app.get_keys(&token).await.json().await.unwrap();
    assert_eq!(listed["keys"][0]["status"], "error", "{listed}");
}

fn cli(vars: &HashMap<String, String>, command: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reliablegpt"))
        .arg(command)
        .env_clear()
        .envs(vars)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run reliablegpt");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test]
async fn rotate_master_key_rewraps_offline_then_the_old_version_can_go() {
    let gw = spawn_gateway().await;
    let (k1, k2) = (canary_key(), canary_key());
    let t1 = gw.key_set(&[&k1], &[]).await;
    let t2 = gw.key_set(&[&k2], &[]).await;
    let (legacy_token, _) = store_legacy_key_set(&gw, &canary_key()).await;
    let v1 = gw.app.env[env::MASTER_KEY].clone();
    let v2 = format!("v2:{}", random_secret());

    // The new version listed first: the highest version is active, not the last listed.
    let mut both = gw.app.env.clone();
    both.insert(env::MASTER_KEY.into(), format!("{v2},{v1}"));
    let (ok, out) = cli(&both, "rotate-master-key");
    assert!(ok, "{out}");
    assert!(out.contains("active master key version: v2"), "{out}");
    assert!(out.contains("re-wrapped: 2\n"), "{out}");
    assert!(out.contains("one-layer key sets under v1 (move on their next request): 1"), "{out}");
    assert!(out.contains("keep the older versions"), "{out}");
    for key in [&k1, &k2, &legacy_token] {
        assert!(!out.contains(key.as_str()));
    }
    // Again: nothing left to move among the two-layer sets.
    let (_, again) = cli(&both, "rotate-master-key");
    assert!(again.contains("re-wrapped: 0\n"), "{again}");

    // The one-layer key set moves when its token is used; then the library call reports the rotation complete.
    let vault = Vault::new(
        gw.app.pool.clone(),
        std::sync::Arc::new(ring(env::MASTER_KEY, &both)),
        &ring(env::TOKEN_PEPPER, &both),
    );
    vault.authenticate(&legacy_token).await.unwrap();
    let report = vault.rotate_master_key().await.unwrap();
    assert!(report.complete(), "{report:?}");
    assert_eq!(vault.master_key_usage().await.unwrap(), vec![(2, 3, 0)]);

    // v1 removed: everything still serves.
    let only_v2 = gw
        .app
        .sibling(|e| {
            e.insert(env::MASTER_KEY.into(), v2.clone());
        })
        .await;
    for (token, key) in [(&t1, &k1), (&t2, &k2)] {
        let res = only_v2.chat(token, "gpt-4o").await;
        assert_eq!(res.status(), 200);
        assert_eq!(gw.keys_seen().last(), Some(key));
    }
    assert_eq!(only_v2.get_keys(&legacy_token).await.status(), 200);
}

#[tokio::test]
async fn delete_works_when_the_master_key_version_is_gone() {
    let gw = spawn_gateway().await;
    let token = token_of(&gw.app.create_key_set(json!([canary_key()])).await);
    let other = token_of(&gw.app.create_key_set(json!([canary_key()])).await);
    let only_v2 = gw
        .app
        .sibling(|e| {
            e.insert(env::MASTER_KEY.into(), format!("v2:{}", random_secret()));
        })
        .await;

    assert_eq!(only_v2.delete_keys(&token).await.status(), 204);
    assert_eq!(only_v2.count("vault_key_sets").await, 1);
    assert_eq!(only_v2.count("vault_provider_keys").await, 1);
    error_of(gw.app.get_keys(&token).await, 401).await;

    // The owner of a key set it cannot decrypt sees why, instead of a bare 500.
    let listed: Value = only_v2.get_keys(&other).await.json().await.unwrap();
    assert_eq!(listed["keys"][0]["status"], "error", "{listed}");
}

#[tokio::test]
async fn peppers_rotate_without_reissuing_tokens() {
    let gw = spawn_gateway().await;
    let key = canary_key();
    let token = gw.key_set(&[&key], &[]).await;
    let p1 = gw.app.env[env::TOKEN_PEPPER].clone();
    let p2 = random_secret();
    let hash_under = |pepper: &str| {
        let ring = Keyring::parse(env::TOKEN_PEPPER, pepper).unwrap();
        Peppers::new(&ring).active(&Token::parse(&token).unwrap()).1.0.to_vec()
    };
    let stored = || async {
        sqlx::query_as::<_, (Vec<u8>, i32)>("SELECT token_hash, pepper_version FROM vault_key_sets")
            .fetch_one(&gw.app.pool)
            .await
            .unwrap()
    };
    assert_eq!(stored().await, (hash_under(&p1), 1));

    let both = gw
        .app
        .sibling(|e| {
            e.insert(env::TOKEN_PEPPER.into(), format!("v2:{p2},v1:{p1}"));
        })
        .await;
    assert_eq!(both.get_keys(&token).await.status(), 200);
    assert_eq!(stored().await, (hash_under(&p2), 2), "not re-hashed under the active pepper");

    // Only v2 left: the same token serves; a replica with only the old pepper no longer finds it.
    let only_v2 = gw
        .app
        .sibling(|e| {
            e.insert(env::TOKEN_PEPPER.into(), format!("v2:{p2}"));
        })
        .await;
    let res = only_v2.chat(&token, "gpt-4o").await;
    assert_eq!(res.status(), 200);
    assert_eq!(gw.keys_seen(), vec![key]);
    error_of(gw.app.get_keys(&token).await, 401).await;
}
