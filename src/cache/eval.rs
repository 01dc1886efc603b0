//! `reliablegpt cache-eval --pairs FILE.jsonl`: on labelled pairs of conversations, how often the cache would serve
//! the stored answer when it is right (hit rate) and when it is wrong (wrong-answer rate), at each similarity
//! threshold, with and without the hit guards.
//!
//! A pair is `{"a": …, "b": …, "same_answer": true|false, "kind": "…"}`, one per line, where `a` (stored) and `b`
//! (incoming) are each a lone question (a string) or a chat `messages` array. Pair `a`'s answer is served for `b` at
//! threshold `t` exactly as the lookup would: same context, cosine similarity of the questions at least `t`, and (with
//! guards) [`guard::check`] passing.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::Value;

use super::canonical::Conversation;
use super::embed::{EmbedError, Embedder, Embedding};
use super::guard::{self, Guards, Rejection};

/// Thresholds swept when none are given.
pub const DEFAULT_THRESHOLDS: &[f32] =
    &[0.70, 0.72, 0.74, 0.76, 0.78, 0.80, 0.82, 0.84, 0.86, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98];

/// The highest wrong-answer rate (with guards) a recommended threshold may have.
pub const MAX_WRONG_ANSWER_RATE: f64 = 0.05;

/// Most texts sent to the embedder at once.
const BATCH: usize = 32;

/// One labelled pair: `a` is the stored conversation, `b` the incoming one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub a: Conversation,
    pub b: Conversation,
    /// Whether `a`'s answer is a right answer for `b`.
    pub same_answer: bool,
    /// What the pair tests ("paraphrase", "negation", …), for the breakdown.
    pub kind: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPair {
    a: Value,
    b: Value,
    same_answer: bool,
    kind: String,
}

/// Parses JSON Lines of pairs; blank lines are skipped. The error names the first bad line (counting from 1).
pub fn read_pairs(text: &str) -> Result<Vec<Pair>, String> {
    let mut pairs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let raw: RawPair = serde_json::from_str(line).map_err(|e| format!("line {number}: not a pair: {e}"))?;
        if raw.kind.trim().is_empty() {
            return Err(format!("line {number}: kind must not be empty"));
        }
        let a = side(&raw.a).map_err(|e| format!("line {number}: a: {e}"))?;
        let b = side(&raw.b).map_err(|e| format!("line {number}: b: {e}"))?;
        pairs.push(Pair { a, b, same_answer: raw.same_answer, kind: raw.kind });
    }
    if pairs.is_empty() {
        return Err("no pairs: the file is empty".to_string());
    }
    Ok(pairs)
}

fn side(value: &Value) -> Result<Conversation, String> {
    let conversation = match value {
        Value::String(question) => Conversation::from_query(question),
        Value::Array(messages) => Conversation::from_messages(messages),
        _ => return Err("must be a string or an array of chat messages".to_string()),
    };
    conversation.map_err(|e| e.to_string())
}

/// How many pairs were served at one threshold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Pairs with the same answer that were served (right answers).
    pub hits: usize,
    /// Pairs with different answers that were served (wrong answers).
    pub wrong: usize,
}

/// One threshold of the sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub threshold: f32,
    pub plain: Served,
    pub guarded: Served,
}

/// One kind of pair at the breakdown threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindRow {
    pub kind: String,
    pub same_answer: bool,
    pub pairs: usize,
    /// Served without guards.
    pub served_plain: usize,
    /// Served with guards.
    pub served_guarded: usize,
    /// Among pairs in the same context and above the threshold, how many each guard rejected (in [`Rejection::ALL`]
    /// order).
    pub rejected_by: [usize; 4],
}

/// The outcome of [`evaluate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The embedder's name.
    pub embedder: String,
    /// Pairs with the same answer (the denominator of the hit rate).
    pub should_hit: usize,
    /// Pairs with different answers (the denominator of the wrong-answer rate).
    pub should_miss: usize,
    pub rows: Vec<Row>,
    /// The threshold with the highest hit rate (with guards) among those whose wrong-answer rate with guards is at
    /// most [`MAX_WRONG_ANSWER_RATE`]; ties go to the higher threshold.
    pub recommended: Option<f32>,
    /// The threshold of the per-kind breakdown: the recommended one, or else the one with the lowest wrong-answer rate
    /// with guards.
    pub breakdown_threshold: Option<f32>,
    /// Per kind at `breakdown_threshold`, in order of first appearance.
    pub kinds: Vec<KindRow>,
}

impl Report {
    /// Share of same-answer pairs served.
    pub fn hit_rate(&self, served: Served) -> f64 {
        share(served.hits, self.should_hit)
    }

    /// Share of different-answer pairs served.
    pub fn wrong_answer_rate(&self, served: Served) -> f64 {
        share(served.wrong, self.should_miss)
    }

    /// The report as markdown.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "## Cache evaluation: {}\n", self.embedder);
        let _ = writeln!(
            out,
            "{} pairs: {} should hit (a right answer if served), {} should not (a wrong answer if served).\n",
            self.should_hit + self.should_miss,
            self.should_hit,
            self.should_miss
        );
        out.push_str("| threshold | hit rate | wrong-answer rate | hit rate, guards | wrong-answer rate, guards |\n");
        out.push_str("|---:|---:|---:|---:|---:|\n");
        for row in &self.rows {
            let mark = if Some(row.threshold) == self.recommended { " **←**" } else { "" };
            let _ = writeln!(
                out,
                "| {:.2}{mark} | {} | {} | {} | {} |",
                row.threshold,
                percent(row.plain.hits, self.should_hit),
                percent(row.plain.wrong, self.should_miss),
                percent(row.guarded.hits, self.should_hit),
                percent(row.guarded.wrong, self.should_miss),
            );
        }
        out.push('\n');
        match self.recommended {
            Some(t) => {
                let _ = writeln!(
                    out,
                    "Recommended threshold: **{t:.2}** (the highest hit rate with guards whose wrong-answer rate with \
                     guards is at most {:.0}%).\n",
                    MAX_WRONG_ANSWER_RATE * 100.0
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "No threshold keeps the wrong-answer rate with guards at or under {:.0}%.\n",
                    MAX_WRONG_ANSWER_RATE * 100.0
                );
            }
        }
        if let Some(t) = self.breakdown_threshold {
            let _ = writeln!(out, "### By kind at {t:.2}\n");
            out.push_str("| kind | should hit | pairs | served | served, guards | rejected by guards |\n");
            out.push_str("|---|:---:|---:|---:|---:|---|\n");
            for kind in &self.kinds {
                let rejected: Vec<String> = Rejection::ALL
                    .iter()
                    .zip(kind.rejected_by)
                    .filter(|(_, n)| *n > 0)
                    .map(|(r, n)| format!("{} {n}", r.as_str()))
                    .collect();
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {} | {} |",
                    kind.kind,
                    if kind.same_answer { "yes" } else { "no" },
                    kind.pairs,
                    kind.served_plain,
                    kind.served_guarded,
                    if rejected.is_empty() { "-".to_string() } else { rejected.join(", ") },
                );
            }
        }
        out
    }
}

fn share(n: usize, of: usize) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}

fn percent(n: usize, of: usize) -> String {
    format!("{:.1}% ({n}/{of})", share(n, of) * 100.0)
}

/// What the lookup would see for one pair.
struct Outcome {
    same_context: bool,
    similarity: f32,
    rejection: Option<Rejection>,
}

impl Outcome {
    fn served(&self, threshold: f32, guarded: bool) -> bool {
        self.same_context && self.similarity >= threshold && !(guarded && self.rejection.is_some())
    }
}

/// Embeds every distinct question (in batches of at most 32) and sweeps `thresholds`.
pub async fn evaluate(embedder: &dyn Embedder, pairs: &[Pair], thresholds: &[f32]) -> Result<Report, EmbedError> {
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut texts: Vec<String> = Vec::new();
    for pair in pairs {
        for question in [&pair.a.question, &pair.b.question] {
            if !index.contains_key(question.as_str()) {
                index.insert(question, texts.len());
                texts.push(question.clone());
            }
        }
    }
    let mut embeddings: Vec<Embedding> = Vec::with_capacity(texts.len());
    for batch in texts.chunks(BATCH) {
        let got = embedder.embed(batch).await?;
        if got.len() != batch.len() {
            return Err(EmbedError::Failed(format!("{} embeddings for {} texts", got.len(), batch.len())));
        }
        embeddings.extend(got);
    }
    let embedding = |question: &str| index.get(question).and_then(|&i| embeddings.get(i));
    let mut outcomes = Vec::with_capacity(pairs.len());
    for pair in pairs {
        let (Some(a), Some(b)) = (embedding(&pair.a.question), embedding(&pair.b.question)) else {
            return Err(EmbedError::Failed("a question was not embedded".to_string()));
        };
        if a.len() != b.len() {
            return Err(EmbedError::Failed(format!("embeddings of {} and {} dimensions", a.len(), b.len())));
        }
        outcomes.push(Outcome {
            same_context: pair.a.context == pair.b.context,
            similarity: cosine(a, b),
            // The incoming question is the query, the stored one the candidate.
            rejection: guard::check(&pair.b.question, &pair.a.question, Guards::default()).err(),
        });
    }

    let should_hit = pairs.iter().filter(|p| p.same_answer).count();
    let mut report = Report {
        embedder: embedder.name().to_string(),
        should_hit,
        should_miss: pairs.len() - should_hit,
        rows: Vec::with_capacity(thresholds.len()),
        recommended: None,
        breakdown_threshold: None,
        kinds: Vec::new(),
    };
    for &threshold in thresholds {
        let mut row = Row { threshold, plain: Served::default(), guarded: Served::default() };
        for (pair, outcome) in pairs.iter().zip(&outcomes) {
            for (guarded, served) in [(false, &mut row.plain), (true, &mut row.guarded)] {
                if outcome.served(threshold, guarded) {
                    if pair.same_answer {
                        served.hits += 1;
                    } else {
                        served.wrong += 1;
                    }
                }
            }
        }
        report.rows.push(row);
    }

    // Highest hit rate within the wrong-answer budget; ties to the higher (safer) threshold.
    let mut recommended: Option<&Row> = None;
    for row in report.rows.iter().filter(|r| report.wrong_answer_rate(r.guarded) <= MAX_WRONG_ANSWER_RATE) {
        let better = recommended.is_none_or(|best| {
            row.guarded.hits > best.guarded.hits
                || (row.guarded.hits == best.guarded.hits && row.threshold > best.threshold)
        });
        if better {
            recommended = Some(row);
        }
    }
    report.recommended = recommended.map(|r| r.threshold);
    report.breakdown_threshold = report.recommended.or_else(|| {
        report
            .rows
            .iter()
            .min_by(|x, y| x.guarded.wrong.cmp(&y.guarded.wrong).then(y.guarded.hits.cmp(&x.guarded.hits)))
            .map(|r| r.threshold)
    });

    if let Some(threshold) = report.breakdown_threshold {
        let mut order: Vec<&str> = Vec::new();
        let mut kinds: BTreeMap<&str, KindRow> = BTreeMap::new();
        for (pair, outcome) in pairs.iter().zip(&outcomes) {
            let row = kinds.entry(pair.kind.as_str()).or_insert_with(|| {
                order.push(pair.kind.as_str());
                KindRow {
                    kind: pair.kind.clone(),
                    same_answer: pair.same_answer,
                    pairs: 0,
                    served_plain: 0,
                    served_guarded: 0,
                    rejected_by: [0; 4],
                }
            });
            row.pairs += 1;
            row.served_plain += usize::from(outcome.served(threshold, false));
            row.served_guarded += usize::from(outcome.served(threshold, true));
            if outcome.served(threshold, false)
                && let Some(rejection) = outcome.rejection
                && let Some(slot) = Rejection::ALL.iter().position(|r| *r == rejection)
            {
                row.rejected_by[slot] += 1;
            }
        }
        report.kinds = order.into_iter().filter_map(|kind| kinds.remove(kind)).collect();
    }
    Ok(report)
}

/// Cosine similarity; 0 for a zero vector.
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut norm_a, mut norm_b) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        norm_a += x * x;
        norm_b += y * y;
    }
    if norm_a == 0.0 || norm_b == 0.0 {
        return 0.0;
    }
    (dot / (norm_a.sqrt() * norm_b.sqrt())) as f32
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use serde_json::json;

    use super::super::embed::{BoxFuture, DIMENSIONS};
    use super::*;

    /// Bag of words hashed into buckets: deterministic, and texts sharing most words are close.
    struct FakeEmbedder {
        batches: Mutex<Vec<usize>>,
        fail: bool,
    }

    impl FakeEmbedder {
        fn new() -> Self {
            Self { batches: Mutex::new(Vec::new()), fail: false }
        }
    }

    fn bag_of_words(text: &str) -> Embedding {
        let mut v = vec![0.0f32; DIMENSIONS];
        for word in text.to_lowercase().split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
            // FNV-1a
            let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
            for byte in word.bytes() {
                hash ^= u64::from(byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
            v[(hash % DIMENSIONS as u64) as usize] += 1.0;
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }

    impl Embedder for FakeEmbedder {
        fn embed<'a>(&'a self, texts: &'a [String]) -> BoxFuture<'a, Result<Vec<Embedding>, EmbedError>> {
            Box::pin(async move {
                if self.fail {
                    return Err(EmbedError::Busy);
                }
                self.batches.lock().unwrap().push(texts.len());
                Ok(texts.iter().map(|t| bag_of_words(t)).collect())
            })
        }

        fn name(&self) -> &str {
            "bag-of-words"
        }
    }

    fn pair(a: &str, b: &str, same_answer: bool, kind: &str) -> Pair {
        Pair {
            a: Conversation::from_query(a).unwrap(),
            b: Conversation::from_query(b).unwrap(),
            same_answer,
            kind: kind.to_string(),
        }
    }

    #[test]
    fn reads_strings_and_conversations() {
        let text = concat!(
            r#"{"a": "How do I reset my password?", "b": "how do i reset my password", "same_answer": true, "kind": "casing"}"#,
            "\n\n",
            r#"{"a": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "and in French?"}], "b": [{"role": "user", "content": "and in French?"}], "same_answer": false, "kind": "follow_up"}"#,
            "\n",
        );
        let pairs = read_pairs(text).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].a.question, "How do I reset my password?");
        assert!(pairs[0].same_answer);
        assert_eq!(pairs[1].a.question, pairs[1].b.question);
        assert_ne!(pairs[1].a.context, pairs[1].b.context);
        assert_eq!(pairs[1].kind, "follow_up");
    }

    #[test]
    fn bad_lines_name_their_line() {
        let good = r#"{"a": "x", "b": "y", "same_answer": true, "kind": "paraphrase"}"#;
        let cases = [
            ("{not json", "line 2: not a pair"),
            (r#"{"a": "x", "b": "y", "kind": "paraphrase"}"#, "line 2: not a pair: missing field `same_answer`"),
            (r#"{"a": "x", "b": "y", "same_answer": "yes", "kind": "p"}"#, "line 2: not a pair: invalid type"),
            (
                r#"{"a": "x", "b": "y", "same_answer": true, "kind": "p", "extra": 1}"#,
                "line 2: not a pair: unknown field",
            ),
            (r#"{"a": 5, "b": "y", "same_answer": true, "kind": "p"}"#, "line 2: a: must be a string or an array"),
            (r#"{"a": "x", "b": "   ", "same_answer": true, "kind": "p"}"#, "line 2: b: must not be empty"),
            (
                r#"{"a": "x", "b": [{"role": "assistant", "content": "hi"}], "same_answer": true, "kind": "p"}"#,
                "line 2: b: must end with a user message",
            ),
            (r#"{"a": "x", "b": "y", "same_answer": true, "kind": " "}"#, "line 2: kind must not be empty"),
        ];
        for (bad, expected) in cases {
            let error = read_pairs(&format!("{good}\n{bad}\n{good}")).unwrap_err();
            assert!(error.starts_with(expected), "{bad}: {error}");
        }
        assert!(read_pairs("\n  \n").unwrap_err().contains("no pairs"));
    }

    #[tokio::test]
    async fn serves_like_the_lookup() {
        let follow_up = |earlier: &str| {
            Conversation::from_messages(&[
                json!({"role": "user", "content": earlier}),
                json!({"role": "assistant", "content": "Done."}),
                json!({"role": "user", "content": "and in French?"}),
            ])
            .unwrap()
        };
        let pairs = vec![
            // Same words: similarity 1, served at every threshold, guards agree.
            pair("How do I reset my password?", "how do I reset my password", true, "casing"),
            pair("What is the capital of France?", "What is the capital of France", true, "paraphrase"),
            // 2 of 3 words shared: similarity 2/3.
            pair("cancel order 123", "cancel order 124", false, "number"),
            pair("is it safe", "is it unsafe", false, "negation"),
            // The same follow-up after different earlier turns: similarity 1, never served.
            Pair {
                a: follow_up("Summarise the refund policy."),
                b: follow_up("Summarise the shipping policy."),
                same_answer: false,
                kind: "follow_up".to_string(),
            },
            // Nothing in common.
            pair("Where is my parcel?", "Explain quantum tunnelling", false, "topic"),
            pair("Where is my parcel?", "Has my package shipped yet", true, "paraphrase"),
        ];
        let embedder = FakeEmbedder::new();
        let report = evaluate(&embedder, &pairs, &[0.5, 0.7, 0.99]).await.unwrap();
        assert_eq!(report.embedder, "bag-of-words");
        assert_eq!((report.should_hit, report.should_miss), (3, 4));
        let served: Vec<(Served, Served)> = report.rows.iter().map(|r| (r.plain, r.guarded)).collect();
        assert_eq!(
            served,
            [
                (Served { hits: 2, wrong: 2 }, Served { hits: 2, wrong: 0 }),
                (Served { hits: 2, wrong: 0 }, Served { hits: 2, wrong: 0 }),
                (Served { hits: 2, wrong: 0 }, Served { hits: 2, wrong: 0 }),
            ]
        );
        assert!((report.hit_rate(report.rows[0].guarded) - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(report.wrong_answer_rate(report.rows[0].plain), 0.5);
        // Every threshold has no wrong answers with guards and the same hits: the highest one wins the tie.
        assert_eq!(report.recommended, Some(0.99));
        assert_eq!(report.breakdown_threshold, Some(0.99));

        let at_half = evaluate(&embedder, &pairs, &[0.5]).await.unwrap();
        let kind = |name: &str| at_half.kinds.iter().find(|k| k.kind == name).unwrap().clone();
        let number = kind("number");
        assert_eq!((number.pairs, number.served_plain, number.served_guarded), (1, 1, 0));
        assert_eq!(number.rejected_by, [1, 0, 0, 0]);
        assert_eq!(kind("negation").rejected_by, [0, 1, 0, 0]);
        let follow = kind("follow_up");
        assert_eq!((follow.served_plain, follow.served_guarded), (0, 0));
        let order: Vec<&str> = at_half.kinds.iter().map(|k| k.kind.as_str()).collect();
        assert_eq!(order, ["casing", "paraphrase", "number", "negation", "follow_up", "topic"]);

        let text = at_half.render();
        assert!(text.contains("| 0.50 **←** | 66.7% (2/3) | 50.0% (2/4) | 66.7% (2/3) | 0.0% (0/4) |"), "{text}");
        assert!(text.contains("Recommended threshold: **0.50**"), "{text}");
        assert!(text.contains("| number | no | 1 | 1 | 0 | numbers 1 |"), "{text}");
    }

    #[tokio::test]
    async fn no_threshold_within_budget() {
        // Guards cannot tell these apart; at 0.5 they are served, at 0.99 nothing is, but nothing should hit either.
        let pairs = vec![pair("reset my password", "reset my username", false, "topic")];
        let report = evaluate(&FakeEmbedder::new(), &pairs, &[0.5]).await.unwrap();
        assert_eq!(report.rows[0].guarded, Served { hits: 0, wrong: 1 });
        assert_eq!(report.recommended, None);
        assert_eq!(report.breakdown_threshold, Some(0.5));
        assert!(report.render().contains("No threshold keeps the wrong-answer rate"));
    }

    #[tokio::test]
    async fn embeds_distinct_questions_in_batches() {
        let pairs: Vec<Pair> = (0..50)
            .map(|i| pair(&format!("question {i}"), &format!("question {}", i % 10), i % 10 == i, "paraphrase"))
            .collect();
        let embedder = FakeEmbedder::new();
        evaluate(&embedder, &pairs, DEFAULT_THRESHOLDS).await.unwrap();
        let batches = embedder.batches.lock().unwrap().clone();
        assert_eq!(batches.iter().sum::<usize>(), 50);
        assert!(batches.iter().all(|n| *n <= 32), "{batches:?}");

        let failing = FakeEmbedder { batches: Mutex::new(Vec::new()), fail: true };
        assert!(matches!(evaluate(&failing, &pairs, DEFAULT_THRESHOLDS).await, Err(EmbedError::Busy)));
    }

    #[test]
    fn dev_set_is_well_formed_and_balanced() {
        let pairs = read_pairs(include_str!("../../tests/data/cache_pairs.jsonl")).unwrap();
        assert!(pairs.len() >= 320, "{} pairs", pairs.len());
        let hits = pairs.iter().filter(|p| p.same_answer).count();
        assert!(hits * 10 >= pairs.len() * 4 && hits * 10 <= pairs.len() * 6, "{hits} of {} should hit", pairs.len());
        for kind in ["paraphrase", "reorder", "typo", "casing", "multi_turn_paraphrase"] {
            assert!(pairs.iter().any(|p| p.kind == kind && p.same_answer), "{kind}");
        }
        for kind in ["negation", "number", "date", "entity", "scope", "follow_up", "antonym", "topic"] {
            assert!(pairs.iter().any(|p| p.kind == kind && !p.same_answer), "{kind}");
        }
        for p in &pairs {
            let same_context = p.a.context == p.b.context;
            match p.kind.as_str() {
                "follow_up" => assert!(!same_context && p.a.question == p.b.question, "{p:?}"),
                "multi_turn_paraphrase" => assert!(same_context && !p.a.context.is_empty(), "{p:?}"),
                _ => assert!(same_context, "{p:?}"),
            }
            assert_ne!(p.a, p.b);
        }
    }

    #[test]
    fn guards_on_the_dev_set() {
        // A floor, not a target: the guards must keep rejecting most look-alike traps and passing most paraphrases.
        let pairs = read_pairs(include_str!("../../tests/data/cache_pairs.jsonl")).unwrap();
        let passes = |p: &Pair| guard::check(&p.b.question, &p.a.question, Guards::default()).is_ok();
        let hits: Vec<&Pair> = pairs.iter().filter(|p| p.same_answer).collect();
        let traps: Vec<&Pair> = pairs
            .iter()
            .filter(|p| matches!(p.kind.as_str(), "negation" | "number" | "date" | "scope" | "antonym"))
            .collect();
        let passed = hits.iter().filter(|p| passes(p)).count();
        let caught = traps.iter().filter(|p| !passes(p)).count();
        assert!(passed * 100 >= hits.len() * 80, "{passed} of {} paraphrases pass", hits.len());
        assert!(caught * 100 >= traps.len() * 95, "{caught} of {} traps caught", traps.len());
    }
}
