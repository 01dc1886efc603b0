//! Every upstream attempt becomes an event for the alerts worker, without the request ever waiting on it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reliablegpt::config::{EngineSettings, MasterKeyring, Secret32};
use reliablegpt::egress::{EgressPolicy, HostPattern};
use reliablegpt::engine::events::EventSink;
use reliablegpt::engine::{Endpoint, Engine, FailureClass, GatewayRequest, ProviderKind, Reply};
use reliablegpt::mock_upstream::{Behavior, MockUpstream};
use reliablegpt::vault::{KeyTarget, OpenKeySet, Policy, Provider, ProviderKey, Vault};
use secrecy::SecretString;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{TestDatabase, random_secret};

#[tokio::test]
async fn each_attempt_emits_one_event_with_its_class_key_model_and_instance() {
    let mock = MockUpstream::start("127.0.0.1:0".parse().unwrap()).await.unwrap();
    mock.script("gpt-4o", vec![Behavior::server_error(), Behavior::ok()]);
    let db = TestDatabase::create().await;
    let vault = Vault::new(
        db.pool().await,
        Arc::new(MasterKeyring::parse(&random_secret()).unwrap()),
        Arc::new(Secret32::random()),
    );
    let settings = EngineSettings {
        openai_base_url: mock.base_url(),
        retry_base: Duration::from_millis(5),
        ..EngineSettings::default()
    };
    let egress = EgressPolicy::new(vec![HostPattern::parse("127.0.0.1").unwrap()], true);
    let (sink, mut events) = EventSink::channel(16);
    let engine = Arc::new(Engine::new(settings, egress, vault, sink).unwrap());

    let key_id = Uuid::new_v4();
    let set = Arc::new(OpenKeySet {
        key_set_id: Uuid::new_v4(),
        policy: Policy::default(),
        keys: vec![ProviderKey {
            id: key_id,
            provider: Provider::Openai,
            secret: SecretString::from("sk-events-0000000000000000000000000000"),
            target: KeyTarget::default(),
            invalid_since: None,
        }],
        loaded_at: Instant::now(),
    });
    let body = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]});
    let request = GatewayRequest {
        endpoint: Endpoint::Chat,
        raw: serde_json::to_vec(&body).unwrap().into(),
        body,
        model: "gpt-4o".into(),
        stream: false,
        fallbacks: None,
        instance: Some("shop-42".into()),
        timeout: None,
        hedge: None,
    };
    let reply = engine.serve(set.clone(), request).await;
    assert!(matches!(reply, Reply::Upstream { status: 200, .. }));

    let first = events.recv().await.unwrap();
    let second = events.recv().await.unwrap();
    assert!(events.try_recv().is_err(), "exactly one event per attempt");
    for e in [&first, &second] {
        assert_eq!(e.key_set_id, set.key_set_id);
        assert_eq!(e.key_id, key_id);
        assert_eq!(e.model, "gpt-4o");
        assert_eq!(e.provider, ProviderKind::Openai);
        assert_eq!(e.instance.as_deref(), Some("shop-42"));
        assert!(e.latency > Duration::ZERO);
    }
    assert_eq!((first.class, first.status), (Some(FailureClass::Transient), Some(500)));
    assert_eq!((second.class, second.status), (None, Some(200)));
}
