//! What an attacker with a database dump, the master key, or the logs can and cannot learn.

use std::process::Command;
use std::sync::Arc;

use reliablegpt::config::{Keyring, env};
use reliablegpt::vault::crypto::{AeadKey, derive_kek, open_provider_key, unwrap_two_layers};
use reliablegpt::vault::{KeyTarget, Vault};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use sqlx::Row;

use crate::helpers::{
    RunningService, TestDatabase, assert_absent, base_env, canary_key, error_of, random_secret, spawn_app, token_of,
};

/// Every column of every table, as text (bytea renders as hex).
async fn whole_database_as_text(pool: &sqlx::PgPool) -> String {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT quote_ident(table_name) FROM information_schema.tables \
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(tables.iter().any(|t| t == "vault_provider_keys"), "{tables:?}");
    let mut out = String::new();
    for table in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT t::text FROM {table} t")).fetch_all(pool).await.unwrap();
        out.push_str(&rows.join("\n"));
    }
    out
}

#[tokio::test]
async fn database_dump_holds_no_key_and_no_token() {
    let app = spawn_app().await;
    let (k1, k2) = (canary_key(), canary_key());
    let created = app
        .post_keys(&json!({"user_email": "dev@example.com",
            "keys": [k1, {"provider": "azure", "key": k2, "endpoint": "https://r.openai.azure.com",
                          "api_version": "2024-10-21", "deployments": {"gpt-4o": "d"}}]}))
        .await
        .json::<Value>()
        .await
        .unwrap();
    let token = token_of(&created);
    let k3 = canary_key();
    assert_eq!(app.patch_keys(&token, &json!({"add_keys": [k3]})).await.status(), 200);

    let dump = whole_database_as_text(&app.pool).await;
    assert!(dump.contains("dev@example.com"), "the dump query must see the rows");
    for secret in [&k1, &k2, &k3, &token] {
        assert_absent(&dump, secret, "database dump");
    }

    if let Ok(bin_dir) = std::env::var("RELIABLEGPT_PG_BIN_DIR") {
        let out = Command::new(format!("{bin_dir}/pg_dump")).arg(&app.db.url).output().expect("run pg_dump");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let pg_dump = String::from_utf8_lossy(&out.stdout);
        assert!(pg_dump.contains("vault_provider_keys"));
        for secret in [&k1, &k2, &k3, &token] {
            assert_absent(&pg_dump, secret, "pg_dump output");
        }
    }
}

#[tokio::test]
async fn database_plus_master_key_without_the_token_decrypts_nothing() {
    let app = spawn_app().await;
    let k = canary_key();
    let created = app.create_key_set(json!([k])).await;
    let token = token_of(&created);
    let keyring = Keyring::parse(env::MASTER_KEY, &app.env[env::MASTER_KEY]).unwrap();
    let master = keyring.active().1.expose();

    let row = sqlx::query(
        "SELECT s.id, s.wrapped_dek, k.id AS key_id, k.ciphertext, k.target FROM vault_key_sets s \
         JOIN vault_provider_keys k ON k.key_set_id = s.id",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    let (set_id, wrapped, key_id, ciphertext): (uuid::Uuid, Vec<u8>, uuid::Uuid, Vec<u8>) =
        (row.get("id"), row.get("wrapped_dek"), row.get("key_id"), row.get("ciphertext"));
    let target: sqlx::types::Json<KeyTarget> = row.get("target");

    // Every guess short of the token fails: no token, another valid token, the token hash, the key set id.
    let other_token = reliablegpt::vault::Token::generate();
    let token_hash: Vec<u8> =
        sqlx::query_scalar("SELECT token_hash FROM vault_key_sets").fetch_one(&app.pool).await.unwrap();
    for guess in [&b""[..], other_token.expose().as_bytes(), &token_hash, set_id.as_bytes()] {
        assert!(unwrap_two_layers(&wrapped, guess, master, 1, set_id).is_err());
    }
    // The master key used as if the data key were in one layer under it fails too.
    assert!(AeadKey::unwrap(&wrapped, &derive_kek(master, token.as_bytes(), set_id), set_id).is_err());
    assert!(AeadKey::unwrap(&wrapped, &derive_kek(&[0; 32], master, set_id), set_id).is_err());

    // With the token, the same data decrypts: the test above could have failed.
    let dek = unwrap_two_layers(&wrapped, token.as_bytes(), master, 1, set_id).unwrap();
    let plain = open_provider_key(&dek, &ciphertext, set_id, key_id, "openai", &target.0.digest(), false).unwrap();
    assert_eq!(plain.as_slice(), k.as_bytes());
}

#[tokio::test]
async fn master_key_rotation_rewraps_on_use_then_the_old_key_can_go() {
    let app = spawn_app().await;
    let k = canary_key();
    let created = app.create_key_set(json!([k])).await;
    let token = token_of(&created);
    let untouched = app.create_key_set(json!([canary_key()])).await;
    let v1 = app.env[env::MASTER_KEY].clone();
    let v2 = format!("v2:{}", random_secret());
    let version = |pool: sqlx::PgPool, id: String| async move {
        sqlx::query_scalar::<_, i32>("SELECT master_key_version FROM vault_key_sets WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let set_id = created["key_set_id"].as_str().unwrap().to_owned();
    assert_eq!(version(app.pool.clone(), set_id.clone()).await, 1);

    let both = app
        .sibling(|e| {
            e.insert(env::MASTER_KEY.into(), format!("{v1},{v2}"));
        })
        .await;
    assert_eq!(both.get_keys(&token).await.status(), 200);
    assert_eq!(version(app.pool.clone(), set_id.clone()).await, 2, "used key set was not re-wrapped");
    let untouched_id = untouched["key_set_id"].as_str().unwrap().to_owned();
    assert_eq!(version(app.pool.clone(), untouched_id).await, 1, "an unused key set cannot be re-wrapped");

    // Only v2 left: the re-wrapped key set still opens and decrypts; the other one now needs v1.
    let only_v2 = app
        .sibling(|e| {
            e.insert(env::MASTER_KEY.into(), v2.clone());
        })
        .await;
    assert_eq!(only_v2.get_keys(&token).await.status(), 200);
    let vault = Vault::new(
        app.pool.clone(),
        Arc::new(Keyring::parse(env::MASTER_KEY, &v2).unwrap()),
        &Keyring::parse(env::TOKEN_PEPPER, &app.env[env::TOKEN_PEPPER]).unwrap(),
    );
    let session = vault.authenticate(&token).await.unwrap();
    let opened = vault.open_key_set(&session).await.unwrap();
    assert_eq!(opened.keys[0].secret.expose_secret(), k);
    // The other one cannot be decrypted here: its owner sees that, and serving it fails without a secret in the answer.
    let listed: Value = only_v2.get_keys(&token_of(&untouched)).await.json().await.unwrap();
    assert_eq!(listed["keys"][0]["status"], "error", "{listed}");
    let res = only_v2.client.post(only_v2.url("/v1/chat/completions")).bearer_auth(token_of(&untouched));
    let res = res.json(&json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})).send().await;
    let error = error_of(res.unwrap(), 500).await;
    assert_eq!(error["code"], "internal_error");
    assert_eq!(vault.master_key_usage().await.unwrap(), vec![(1, 1, 0), (2, 1, 0)]);
}

#[tokio::test]
async fn all_authentication_failures_look_the_same() {
    let app = spawn_app().await;
    let created = app.create_key_set(json!([canary_key()])).await;
    let token = token_of(&created);
    let revoked = token_of(&app.create_key_set(json!([canary_key()])).await);
    assert_eq!(app.delete_keys(&revoked).await.status(), 204);
    let mut mutated = token.clone().into_bytes();
    mutated[20] = if mutated[20] == b'a' { b'b' } else { b'a' };
    let mutated = String::from_utf8(mutated).unwrap();
    let unknown = reliablegpt::vault::Token::generate().expose().to_owned();

    let mut bodies = Vec::new();
    let client = &app.client;
    let url = app.url("/v1/keys");
    let requests = vec![
        client.get(&url),
        client.get(&url).header("authorization", format!("Basic {token}")),
        client.get(&url).header("authorization", "Bearer"),
        client.get(&url).bearer_auth("garbage"),
        client.get(&url).bearer_auth(&mutated),
        client.get(&url).bearer_auth(&unknown),
        client.get(&url).bearer_auth(&revoked),
        client.get(&url).bearer_auth(format!("{token}x")),
    ];
    for request in requests {
        let res = request.send().await.unwrap();
        assert_eq!(res.status(), 401);
        bodies.push(res.text().await.unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:#?}");
    let error: Value = serde_json::from_str(&bodies[0]).unwrap();
    assert_eq!(error["error"]["code"], "invalid_api_key");
    assert_eq!(app.get_keys(&token).await.status(), 200);
}

#[tokio::test]
async fn mutated_tokens_fail_before_any_database_access() {
    let app = spawn_app().await;
    let token = token_of(&app.create_key_set(json!([canary_key()])).await);
    let mut mutated = token.clone().into_bytes();
    let last = mutated.len() - 1;
    mutated[last] = if mutated[last] == b'0' { b'1' } else { b'0' };
    let mutated = String::from_utf8(mutated).unwrap();

    // With the database gone, a checksum failure is still a clean 401 (no query was needed), while a well-formed token
    // needs the database and fails differently.
    app.db.drop_now().await;
    let error = error_of(app.get_keys(&mutated).await, 401).await;
    assert_eq!(error["code"], "invalid_api_key");
    let res = app.get_keys(&token).await;
    assert_eq!(res.status(), 500);
}

/// The real binary at TRACE level on a fresh, migrated database, wired to a mock upstream.
struct Traced {
    db: std::sync::Arc<TestDatabase>,
    pool: sqlx::PgPool,
    mock: reliablegpt::mock_upstream::MockUpstream,
    vars: std::collections::HashMap<String, String>,
    service: RunningService,
}

async fn traced_service() -> Traced {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    reliablegpt::db::migrate(&pool).await.unwrap();
    let mock = reliablegpt::mock_upstream::MockUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut vars = base_env(&db);
    vars.insert(env::OPENAI_BASE_URL.into(), mock.base_url());
    vars.insert(env::ALLOW_PRIVATE_UPSTREAMS.into(), "true".into());
    vars.insert(env::ALLOWED_UPSTREAM_HOSTS.into(), "127.0.0.1".into());
    let service = RunningService::start(&vars, "trace");
    Traced { db, pool, mock, vars, service }
}

/// Starts the real binary at TRACE level, runs every vault flow, and searches everything it printed.
#[tokio::test]
async fn trace_logs_hold_no_key_and_no_token() {
    let Traced { db: _db, pool: _pool, mock, vars, service } = traced_service().await;
    let base = service.base.clone();
    let client = reqwest::Client::new();
    let (k1, k2) = (canary_key(), canary_key());
    let refused =
        service.post_keys(&json!({"user_email": "dev@example.com", "keys": [k1, "bad key with spaces"]})).await;
    assert_eq!(refused["error"]["param"], "keys[1].key");
    let created = service.post_keys(&json!({"user_email": "dev@example.com", "keys": [k1]})).await;
    let token = token_of(&created);
    let url = format!("{base}/v1/keys");
    assert_eq!(client.get(&url).bearer_auth(&token).send().await.unwrap().status(), 200);
    let patched = client.patch(&url).bearer_auth(&token).json(&json!({"add_keys": [k2]})).send().await.unwrap();
    assert_eq!(patched.status(), 200);
    // Upstream calls carry the provider keys: a rejected key, a rotation, a stream.
    mock.set_invalid_key(&k1);
    let chat = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let res = client.post(format!("{base}/v1/chat/completions")).bearer_auth(&token).json(&chat).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut streaming = chat.clone();
    streaming["stream"] = json!(true);
    let res =
        client.post(format!("{base}/v1/chat/completions")).bearer_auth(&token).json(&streaming).send().await.unwrap();
    assert!(res.text().await.unwrap().contains("[DONE]"));
    // The Responses API: a stored response, then a call about it with the key that created it.
    let created: serde_json::Value = client
        .post(format!("{base}/v1/responses"))
        .bearer_auth(&token)
        .json(&json!({"model": "gpt-4o", "input": "hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap();
    let res = client.get(format!("{base}/v1/responses/{id}")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let seen: Vec<String> = mock.requests().into_iter().filter_map(|r| r.api_key).collect();
    assert_eq!(seen, vec![k1.clone(), k2.clone(), k2.clone(), k2.clone(), k2.clone()], "the keys really went upstream");
    let not_found = client.get(format!("{base}/v1/keys/{token}?key={k1}")).send().await.unwrap();
    assert_eq!(not_found.status(), 404);
    assert_eq!(client.get(&url).bearer_auth(format!("{token}x")).send().await.unwrap().status(), 401);
    assert_eq!(client.delete(&url).bearer_auth(&token).send().await.unwrap().status(), 204);
    assert_eq!(client.get(&url).bearer_auth(&token).send().await.unwrap().status(), 401);

    let logs = service.stop();

    assert!(logs.contains("key set created") && logs.contains("key set revoked"), "flows were not logged");
    assert!(logs.contains("upstream attempt failed"), "the rotation was not logged");
    assert!(logs.contains("\"level\":\"TRACE\"") || logs.contains("\"level\":\"DEBUG\""), "not a TRACE capture");
    for secret in [&k1, &k2, &token] {
        assert_absent(&logs, secret, "service logs");
    }
    assert_absent(&logs, &vars[env::MASTER_KEY], "service logs");
    assert_absent(&logs, &vars[env::TOKEN_PEPPER], "service logs");
}

/// Cached questions and answers are customer data: neither a database dump nor TRACE logs show them, whether they came
/// in through write-through, `POST /v1/cache` or a lookup's query string; scoped tokens are not logged either.
#[tokio::test]
async fn cached_questions_and_answers_stay_out_of_dumps_and_logs() {
    let Traced { db, pool, mock: _mock, vars: _vars, service } = traced_service().await;
    let base = service.base.clone();
    let client = reqwest::Client::new();
    let created = service
        .post_keys(&json!({"user_email": "dev@example.com", "keys": [canary_key()], "policy": {"caching": true}}))
        .await;
    let token = token_of(&created);
    let (asked, question, answer) = (canary_key(), canary_key(), canary_key());
    let chat = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": format!("Please explain {asked}")}]});
    let res = client.post(format!("{base}/v1/chat/completions")).bearer_auth(&token).json(&chat).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let stored = client
        .post(format!("{base}/v1/cache"))
        .bearer_auth(&token)
        .json(&json!({"instance_id": "shop", "query": format!("What is {question}?"), "response": format!("It is {answer}.")}))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 201);
    let minted: Value = client
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(&token)
        .json(&json!({"scope": "cache:read", "instance_id": "shop"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = minted["token"].as_str().unwrap().to_owned();
    let hit: Value = client
        .get(format!("{base}/v1/cache"))
        .bearer_auth(&jwt)
        .query(&[("query", format!("What is {question}?"))])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(hit["response"], format!("It is {answer}."));
    // The write-through lands off the request path.
    for _ in 0..200 {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM cache_entries").fetch_one(&pool).await.unwrap();
        if n == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let dump = whole_database_as_text(&pool).await;
    assert_eq!(sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cache_entries").fetch_one(&pool).await.unwrap(), 2);
    for secret in [&asked, &question, &answer, &jwt] {
        assert_absent(&dump, secret, "database dump");
    }
    if let Ok(bin_dir) = std::env::var("RELIABLEGPT_PG_BIN_DIR") {
        let out = Command::new(format!("{bin_dir}/pg_dump")).arg(&db.url).output().expect("run pg_dump");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let pg_dump = String::from_utf8_lossy(&out.stdout);
        assert!(pg_dump.contains("cache_entries"));
        for secret in [&asked, &question, &answer] {
            assert_absent(&pg_dump, secret, "pg_dump output");
        }
    }
    let logs = service.stop();
    assert!(logs.contains("\"level\":\"TRACE\"") || logs.contains("\"level\":\"DEBUG\""), "not a TRACE capture");
    for secret in [&asked, &question, &answer, &jwt, &token] {
        assert_absent(&logs, secret, "service logs");
    }
}
