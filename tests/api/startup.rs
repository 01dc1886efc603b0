//! The service refuses to start when it should, with one line saying why.

use std::process::Command;

use reliablegpt::config::env;
use reliablegpt::startup::{Application, StartError};

use crate::helpers::{TestDatabase, base_env, settings_from};

#[tokio::test]
async fn refuses_a_missing_schema_and_names_the_command() {
    let db = TestDatabase::create().await;
    let settings = settings_from(&base_env(&db));
    let err = Application::build(settings, false).await.err().expect("must refuse to start");
    assert!(matches!(err, StartError::Schema(_)), "{err}");
    assert!(err.to_string().contains("reliablegpt migrate"), "{err}");
    // With --migrate it starts.
    assert!(Application::build(settings_from(&base_env(&db)), true).await.is_ok());
}

#[tokio::test]
async fn refuses_an_older_schema() {
    let db = TestDatabase::create().await;
    let pool = db.pool().await;
    reliablegpt::db::migrate(&pool).await.unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)")
        .execute(&pool)
        .await
        .unwrap();
    let err = Application::build(settings_from(&base_env(&db)), false).await.err().expect("must refuse");
    assert!(err.to_string().contains("older than this build"), "{err}");
}

#[test]
fn missing_or_malformed_secrets_stop_the_binary_with_one_line() {
    let run = |vars: &[(&str, &str)]| {
        let out = Command::new(env!("CARGO_BIN_EXE_reliablegpt"))
            .arg("serve")
            .env_clear()
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let (ok, stderr) = run(&[(env::DATABASE_URL, "postgres://x@127.0.0.1:1/x"), (env::TOKEN_PEPPER, key)]);
    assert!(!ok);
    assert_eq!(stderr, "reliablegpt: RELIABLEGPT_MASTER_KEY is not set\n");
    let (ok, stderr) = run(&[
        (env::DATABASE_URL, "postgres://x@127.0.0.1:1/x"),
        (env::MASTER_KEY, "c2hvcnQ="),
        (env::TOKEN_PEPPER, key),
    ]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("RELIABLEGPT_MASTER_KEY is malformed") && !stderr.contains("c2hvcnQ="), "{stderr}");
}

#[test]
fn secrets_command_prints_usable_export_lines() {
    let out = Command::new(env!("CARGO_BIN_EXE_reliablegpt")).arg("secrets").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("export RELIABLEGPT_MASTER_KEY=v1:"));
    assert!(lines[1].starts_with("export RELIABLEGPT_TOKEN_PEPPER="));
}
