//! The cache endpoints against the real database: store, look up, isolation between key sets and instances, input
//! validation, purge, scoped tokens.

use serde_json::{Value, json};

use crate::helpers::{GatewayTest, error_of, spawn_gateway};

const K1: &str = "sk-test-key-one-000000000000000000000001";

impl GatewayTest {
    pub async fn cache_store(&self, token: &str, body: Value) -> reqwest::Response {
        self.app.client.post(self.app.url("/v1/cache")).bearer_auth(token).json(&body).send().await.unwrap()
    }

    pub async fn cache_get(&self, token: &str, query: &[(&str, &str)]) -> reqwest::Response {
        self.app.client.get(self.app.url("/v1/cache")).bearer_auth(token).query(query).send().await.unwrap()
    }

    pub async fn cache_lookup(&self, token: &str, body: Value) -> reqwest::Response {
        self.app.client.post(self.app.url("/v1/cache/lookup")).bearer_auth(token).json(&body).send().await.unwrap()
    }

    pub async fn cache_delete(&self, token: &str, query: &[(&str, &str)]) -> reqwest::Response {
        self.app.client.delete(self.app.url("/v1/cache")).bearer_auth(token).query(query).send().await.unwrap()
    }

    pub async fn mint(&self, token: &str, body: Value) -> reqwest::Response {
        self.app.client.post(self.app.url("/v1/tokens")).bearer_auth(token).json(&body).send().await.unwrap()
    }
}

async fn json_of(res: reqwest::Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    assert_eq!(got, status, "{body}");
    body
}

#[tokio::test]
async fn stored_answers_are_found_exactly_per_key_set_and_instance() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    let other_set = gw.key_set(&[K1], &[]).await;
    let stored = json_of(
        gw.cache_store(
            &token,
            json!({"instance_id": "shop-1", "query": "How do I reset my password?", "response": "Click 'Forgot password'.", "model": "gpt-4o"}),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(stored["stored"], true);
    assert_eq!(stored["instance_id"], "shop-1");

    // Whitespace differences are the same question; the answer comes back with its provenance.
    let hit = json_of(
        gw.cache_get(&token, &[("instance_id", "shop-1"), ("query", "How do I  reset my password? ")]).await,
        200,
    )
    .await;
    assert_eq!(hit["hit"], true, "{hit}");
    assert_eq!(hit["response"], "Click 'Forgot password'.");
    assert_eq!(hit["similarity"], 1.0);
    assert_eq!(hit["model"], "gpt-4o");
    assert!(hit["cached_at"].as_str().unwrap().starts_with("20"), "{hit}");

    // The same question as a one-message conversation, through POST /v1/cache/lookup.
    let body =
        json!({"instance_id": "shop-1", "messages": [{"role": "user", "content": "How do I reset my password?"}]});
    assert_eq!(json_of(gw.cache_lookup(&token, body).await, 200).await["hit"], true);

    // Another instance, another key set, the default instance: all miss, and a miss is exactly {"hit": false}.
    for (who, query) in [
        (&token, vec![("instance_id", "shop-2"), ("query", "How do I reset my password?")]),
        (&token, vec![("query", "How do I reset my password?")]),
        (&other_set, vec![("instance_id", "shop-1"), ("query", "How do I reset my password?")]),
    ] {
        assert_eq!(json_of(gw.cache_get(who, &query).await, 200).await, json!({"hit": false}));
    }
    // A follow-up carries its conversation: the same last message after other turns is another question.
    let follow_up = json!({"instance_id": "shop-1", "messages": [
        {"role": "user", "content": "Tell me about billing."},
        {"role": "assistant", "content": "Sure."},
        {"role": "user", "content": "How do I reset my password?"}]});
    assert_eq!(json_of(gw.cache_lookup(&token, follow_up).await, 200).await["hit"], false);

    // Storing the same conversation again replaces its answer.
    gw.cache_store(
        &token,
        json!({"instance_id": "shop-1", "query": "How do I reset my password?", "response": "Use the app."}),
    )
    .await;
    let hit = json_of(
        gw.cache_get(&token, &[("instance_id", "shop-1"), ("query", "How do I reset my password?")]).await,
        200,
    )
    .await;
    assert_eq!(hit["response"], "Use the app.");
    assert!(hit.get("model").is_none(), "{hit}");
    assert_eq!(gw.app.count("cache_entries").await, 1);
}

#[tokio::test]
async fn bad_input_gets_a_clear_400_and_stores_nothing() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    let long = "a".repeat(32 * 1024 + 1);
    let huge = "b".repeat(1024 * 1024 + 1);
    for (body, param) in [
        (json!({"query": "q", "response": "r", "instance_id": "bad id!"}), "instance_id"),
        (json!({"query": "q", "response": "r", "instance_id": "x".repeat(129)}), "instance_id"),
        (json!({"query": "q", "response": "r", "instance_id": ""}), "instance_id"),
        (json!({"response": "r"}), "query"),
        (json!({"query": "q", "messages": [{"role": "user", "content": "q"}], "response": "r"}), "query"),
        (json!({"query": "   ", "response": "r"}), "query"),
        (json!({"query": long, "response": "r"}), "query"),
        (json!({"messages": [], "response": "r"}), "messages"),
        (json!({"messages": [{"role": "assistant", "content": "hi"}], "response": "r"}), "messages"),
        (json!({"query": "q", "response": ""}), "response"),
        (json!({"query": "q", "response": huge}), "response"),
        (json!({"query": "q", "response": "r", "ttl_seconds": 10}), "ttl_seconds"),
        (json!({"query": "q", "response": "r", "ttl_seconds": 40_000_000}), "ttl_seconds"),
        (json!({"query": "q", "response": "r", "model": ""}), "model"),
    ] {
        let e = error_of(gw.cache_store(&token, body.clone()).await, 400).await;
        assert_eq!(e["param"], param, "{body:.200}: {e}");
        assert_eq!(e["type"], "invalid_request_error");
    }
    // Unknown fields and wrong types are JSON errors in the same shape.
    let e = error_of(gw.cache_store(&token, json!({"query": "q", "response": "r", "colour": 1})).await, 400).await;
    assert_eq!(e["code"], "invalid_json");
    let e = error_of(gw.cache_store(&token, json!({"query": 5, "response": "r"})).await, 400).await;
    assert_eq!(e["code"], "invalid_json");
    // Lookups validate too.
    for query in [
        vec![("instance_id", "ok"), ("query", "q"), ("threshold", "0.2")],
        vec![("instance_id", "ok"), ("query", "q"), ("threshold", "lots")],
        vec![("instance_id", "ok")],
        vec![("instance_id", "no spaces"), ("query", "q")],
        vec![("query", "q"), ("colour", "red")],
    ] {
        let e = error_of(gw.cache_get(&token, &query).await, 400).await;
        assert_eq!(e["type"], "invalid_request_error", "{query:?}: {e}");
    }
    let e = error_of(gw.cache_lookup(&token, json!({"query": "q", "threshold": 1.5})).await, 400).await;
    assert_eq!(e["param"], "threshold");
    let e = error_of(gw.cache_delete(&token, &[("query", "q")]).await, 400).await;
    assert_eq!(e["param"], "query_string");
    assert_eq!(gw.app.count("cache_entries").await, 0);
    // No token, a wrong token: 401 in the usual shape.
    let res = gw.app.client.get(gw.app.url("/v1/cache")).query(&[("query", "q")]).send().await.unwrap();
    assert_eq!(error_of(res, 401).await["code"], "invalid_api_key");
    let e = error_of(gw.cache_store("rgpt_nope", json!({"query": "q", "response": "r"})).await, 401).await;
    assert_eq!(e["code"], "invalid_api_key");
    // Other methods are 405.
    let res = gw.app.client.put(gw.app.url("/v1/cache")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(res.status(), 405);
}

#[tokio::test]
async fn purge_deletes_one_instance_or_the_whole_key_set_and_revocation_deletes_everything() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    let other = gw.key_set(&[K1], &[]).await;
    for (who, instance) in [(&token, "a"), (&token, "b"), (&token, "b"), (&other, "a")] {
        let q = format!("question for {instance} {}", uuid::Uuid::new_v4());
        assert_eq!(
            gw.cache_store(who, json!({"instance_id": instance, "query": q, "response": "r"})).await.status(),
            201
        );
    }
    assert_eq!(gw.app.count("cache_entries").await, 4);
    assert_eq!(gw.cache_delete(&token, &[("instance_id", "b")]).await.status(), 204);
    assert_eq!(gw.app.count("cache_entries").await, 2);
    assert_eq!(gw.cache_delete(&token, &[]).await.status(), 204);
    assert_eq!(gw.app.count("cache_entries").await, 1, "the other key set keeps its entry");
    assert_eq!(gw.app.delete_keys(&other).await.status(), 204);
    assert_eq!(gw.app.count("cache_entries").await, 0, "DELETE /v1/keys purges the key set's cache");
}

#[tokio::test]
async fn the_quota_evicts_the_oldest_entries() {
    let gw = spawn_gateway().await;
    let token = gw.key_set_with(json!([K1]), json!({"cache_max_entries": 3})).await;
    for i in 0..5 {
        let res = gw
            .cache_store(&token, json!({"query": format!("question number {i}"), "response": format!("answer {i}")}))
            .await;
        assert_eq!(res.status(), 201);
    }
    assert_eq!(gw.app.count("cache_entries").await, 3);
    let oldest = json_of(gw.cache_get(&token, &[("query", "question number 0")]).await, 200).await;
    assert_eq!(oldest["hit"], false);
    let newest = json_of(gw.cache_get(&token, &[("query", "question number 4")]).await, 200).await;
    assert_eq!(newest["response"], "answer 4");
    // Expired entries are never served.
    sqlx::query("UPDATE cache_entries SET expires_at = now() - interval '1 second'")
        .execute(&gw.app.pool)
        .await
        .unwrap();
    assert_eq!(json_of(gw.cache_get(&token, &[("query", "question number 4")]).await, 200).await["hit"], false);
}

#[tokio::test]
async fn scoped_tokens_read_one_instance_only_and_die_with_their_key_set() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    for instance in ["web", "other"] {
        let body = json!({"instance_id": instance, "query": "What are your opening hours?", "response": format!("9-5 at {instance}")});
        assert_eq!(gw.cache_store(&token, body).await.status(), 201);
    }
    let minted =
        json_of(gw.mint(&token, json!({"scope": "cache:read", "instance_id": "web", "ttl_seconds": 600})).await, 200)
            .await;
    let jwt = minted["token"].as_str().unwrap().to_owned();
    assert_eq!(jwt.split('.').count(), 3, "{jwt}");
    assert!(minted["expires_at"].as_str().is_some());

    // Its own instance: explicitly or by default.
    let hit =
        json_of(gw.cache_get(&jwt, &[("instance_id", "web"), ("query", "What are your opening hours?")]).await, 200)
            .await;
    assert_eq!(hit["response"], "9-5 at web");
    let hit = json_of(gw.cache_get(&jwt, &[("query", "What are your opening hours?")]).await, 200).await;
    assert_eq!(hit["response"], "9-5 at web");
    let body = json!({"query": "What are your opening hours?"});
    assert_eq!(json_of(gw.cache_lookup(&jwt, body).await, 200).await["response"], "9-5 at web");
    // Another instance: 403. Anything but reading: 401 (it is not a special token).
    let e =
        error_of(gw.cache_get(&jwt, &[("instance_id", "other"), ("query", "What are your opening hours?")]).await, 403)
            .await;
    assert_eq!(e["code"], "forbidden");
    assert_eq!(gw.cache_store(&jwt, json!({"query": "q", "response": "r"})).await.status(), 401);
    assert_eq!(gw.cache_delete(&jwt, &[]).await.status(), 401);
    assert_eq!(gw.mint(&jwt, json!({"scope": "cache:read", "instance_id": "web"})).await.status(), 401);
    assert_eq!(gw.chat(&jwt, "gpt-4o").await.status, 401);
    assert_eq!(gw.app.get_keys(&jwt).await.status(), 401);
    // A tampered token: 401.
    let mut tampered = jwt.clone().into_bytes();
    let at = tampered.len() / 2;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert_eq!(gw.cache_get(&tampered, &[("query", "What are your opening hours?")]).await.status(), 401);
    // Minting validates its input.
    for (body, param) in [
        (json!({"scope": "keys:write", "instance_id": "web"}), "scope"),
        (json!({"scope": "cache:read", "instance_id": "bad id"}), "instance_id"),
        (json!({"scope": "cache:read", "instance_id": "web", "ttl_seconds": 86_401}), "ttl_seconds"),
        (json!({"scope": "cache:read", "instance_id": "web", "ttl_seconds": 0}), "ttl_seconds"),
    ] {
        assert_eq!(error_of(gw.mint(&token, body).await, 400).await["param"], param);
    }
    // Revoking the key set kills its scoped tokens at once.
    assert_eq!(gw.app.delete_keys(&token).await.status(), 204);
    assert_eq!(gw.cache_get(&jwt, &[("query", "What are your opening hours?")]).await.status(), 401);
}

#[tokio::test]
async fn cached_texts_are_encrypted_at_rest() {
    let gw = spawn_gateway().await;
    let token = gw.key_set(&[K1], &[]).await;
    let question = format!("canary question {}", uuid::Uuid::new_v4().simple());
    let answer = format!("canary answer {}", uuid::Uuid::new_v4().simple());
    let body = json!({"instance_id": "shop", "query": question, "response": answer});
    assert_eq!(gw.cache_store(&token, body).await.status(), 201);
    let row: (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT question, response, exact_hash, context_hash FROM cache_entries")
            .fetch_one(&gw.app.pool)
            .await
            .unwrap();
    for blob in [&row.0, &row.1] {
        let text = String::from_utf8_lossy(blob);
        assert!(!text.contains("canary"), "plaintext at rest");
    }
    // A row moved to another instance is not served there (its hashes and its AAD bind it to its instance).
    sqlx::query("UPDATE cache_entries SET instance_id = 'other'").execute(&gw.app.pool).await.unwrap();
    let res = gw.cache_get(&token, &[("instance_id", "other"), ("query", &question)]).await;
    assert_eq!(json_of(res, 200).await["hit"], false);
}

/// With the real embedding model: paraphrases hit, look-alikes that change the answer do not, other key sets never.
#[tokio::test]
async fn paraphrases_hit_by_meaning_and_the_guards_refuse_look_alikes() {
    let gw = crate::helpers::spawn_gateway_with(crate::helpers::with_model).await;
    let token = gw.key_set(&[K1], &[]).await;
    let other_set = gw.key_set(&[K1], &[]).await;
    for (query, response) in [
        ("How can I reset my password?", "Use 'Forgot password' on the sign-in page."),
        ("Cancel order 123", "Order 123 is cancelled."),
        ("Is it safe to delete the cache folder?", "Yes, it is rebuilt on start."),
    ] {
        let body = json!({"query": query, "response": response});
        assert_eq!(gw.cache_store(&token, body).await.status(), 201);
    }
    let paraphrase = json_of(gw.cache_get(&token, &[("query", "How do I reset my password?")]).await, 200).await;
    assert_eq!(paraphrase["hit"], true, "{paraphrase}");
    assert_eq!(paraphrase["response"], "Use 'Forgot password' on the sign-in page.");
    let similarity = paraphrase["similarity"].as_f64().unwrap();
    assert!((0.8..1.0).contains(&similarity), "{similarity}");
    // A stricter threshold for this lookup misses it.
    let strict =
        json_of(gw.cache_get(&token, &[("query", "How do I reset my password?"), ("threshold", "0.999")]).await, 200)
            .await;
    assert_eq!(strict["hit"], false);
    // Another key set asking the very same paraphrase: never.
    let foreign = json_of(gw.cache_get(&other_set, &[("query", "How do I reset my password?")]).await, 200).await;
    assert_eq!(foreign, json!({"hit": false}));
    // Look-alikes that change the answer are refused by the guards even at a permissive threshold.
    for look_alike in ["Cancel order 124", "Is it unsafe to delete the cache folder?"] {
        let body = json!({"query": look_alike, "threshold": 0.5});
        let res = json_of(gw.cache_lookup(&token, body).await, 200).await;
        assert_eq!(res["hit"], false, "{look_alike}: {res}");
    }
    let metrics = gw.app.client.get(gw.app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"reliablegpt_cache_guard_rejections_total{guard="numbers"}"#), "{metrics}");
    assert!(metrics.contains(r#"reliablegpt_cache_lookups_total{result="semantic_hit"} 1"#), "{metrics}");
    // Guards are per key set: with the numbers guard off, the look-alike order is served (the reason it exists).
    let loose = gw.key_set_with(json!([K1]), json!({"cache_threshold": 0.5, "cache_guards": {"numbers": false}})).await;
    assert_eq!(
        gw.cache_store(&loose, json!({"query": "Cancel order 123", "response": "Order 123 is cancelled."}))
            .await
            .status(),
        201
    );
    let served = json_of(gw.cache_get(&loose, &[("query", "Cancel order 124")]).await, 200).await;
    assert_eq!(served["response"], "Order 123 is cancelled.", "{served}");
}

/// An embedder with every slot taken: the lookup fails fast as `Busy`, counted as such (not as an error).
struct BusyEmbedder;

impl reliablegpt::cache::embed::Embedder for BusyEmbedder {
    fn embed<'a>(
        &'a self,
        _texts: &'a [String],
    ) -> reliablegpt::cache::embed::BoxFuture<'a, Result<Vec<Vec<f32>>, reliablegpt::cache::embed::EmbedError>> {
        Box::pin(std::future::ready(Err(reliablegpt::cache::embed::EmbedError::Busy)))
    }

    fn name(&self) -> &str {
        "busy"
    }
}

#[tokio::test]
async fn a_saturated_embedder_makes_lookups_miss_fast_and_is_counted_as_busy() {
    use reliablegpt::cache::{CacheError, Conversation, Matching, Scope, SemanticCache};
    let db = crate::helpers::TestDatabase::create().await;
    let pool = db.pool().await;
    reliablegpt::db::migrate(&pool).await.unwrap();
    let keyring = reliablegpt::config::MasterKeyring::from_keys(vec![(1, reliablegpt::config::Secret32::random())]);
    let metrics = std::sync::Arc::new(reliablegpt::engine::metrics::Metrics::new(&[]));
    let (cache, _worker) = SemanticCache::start(
        pool,
        std::sync::Arc::new(keyring.unwrap()),
        Some(std::sync::Arc::new(BusyEmbedder)),
        metrics.clone(),
        Default::default(),
    );
    let scope = Scope { key_set_id: uuid::Uuid::new_v4(), instance: "default" };
    let result = cache.lookup(scope, &Conversation::from_query("anything").unwrap(), Matching::default()).await;
    assert!(matches!(result, Err(CacheError::Embed(reliablegpt::cache::embed::EmbedError::Busy))), "{result:?}");
    let text = metrics.render(0, 0);
    assert!(text.contains(r#"reliablegpt_cache_lookups_total{result="busy"} 1"#), "{text}");
    assert!(!text.contains(r#"result="error""#), "{text}");
}
