//! Questions for the cache benchmark's `--vectors sentences`: varied support-style questions built from template
//! pairs × verbs × objects × places, each with a paraphrase (the pair's other template, same slots), so the benchmark
//! can store real all-MiniLM-L6-v2 embeddings and ask with real paraphrases. Question `i` is a fixed function of `i`.

/// (stored form, paraphrase form); `{v}` verb, `{o}` object, `{p}` place.
const TEMPLATES: [(&str, &str); 12] = [
    ("How do I {v} {o} in {p}?", "What is the right way to {v} {o} on {p}?"),
    ("What's the best way to {v} {o} for {p}?", "How should I {v} {o} for {p}?"),
    ("Can you explain how to {v} {o} in {p}?", "Explain to me how one would {v} {o} in {p}."),
    ("I need to {v} {o} on {p}, where do I start?", "Where do I begin if I want to {v} {o} on {p}?"),
    ("Why does it fail when I {v} {o} in {p}?", "My attempt to {v} {o} in {p} keeps failing, why?"),
    ("Is it safe to {v} {o} in {p}?", "Are there risks if I {v} {o} in {p}?"),
    ("Give me a step-by-step guide to {v} {o} with {p}.", "Walk me through how to {v} {o} with {p}, step by step."),
    ("How long does it take to {v} {o} on {p}?", "What is the usual time needed to {v} {o} on {p}?"),
    ("What permissions do I need to {v} {o} in {p}?", "Which access rights are required to {v} {o} in {p}?"),
    ("Can I automate how I {v} {o} in {p}?", "Is there a way to script it when I {v} {o} in {p}?"),
    ("What does it cost to {v} {o} on {p}?", "How much will I pay to {v} {o} on {p}?"),
    ("Write a short script to {v} {o} in {p}.", "Could you give me a small script that will {v} {o} in {p}?"),
];

const VERBS: [&str; 30] = [
    "rotate",
    "back up",
    "restore",
    "migrate",
    "encrypt",
    "delete",
    "monitor",
    "debug",
    "scale",
    "configure",
    "upgrade",
    "roll back",
    "share",
    "export",
    "import",
    "audit",
    "rename",
    "archive",
    "test",
    "deploy",
    "cache",
    "index",
    "compress",
    "validate",
    "schedule",
    "clone",
    "secure",
    "document",
    "benchmark",
    "revoke",
];

const OBJECTS: [&str; 40] = [
    "the API keys",
    "a PostgreSQL database",
    "user passwords",
    "the billing records",
    "a Docker image",
    "the TLS certificates",
    "my invoices",
    "a machine learning model",
    "the customer emails",
    "log files",
    "a React app",
    "the DNS records",
    "an S3 bucket",
    "cron jobs",
    "the company wiki",
    "a mobile app",
    "the payroll data",
    "a Kafka topic",
    "the load balancer",
    "SSH keys",
    "a spreadsheet of sales",
    "the product catalog",
    "a chatbot",
    "video files",
    "the analytics dashboard",
    "a Python package",
    "the user sessions",
    "webhooks",
    "a search index",
    "the firewall rules",
    "a recipe collection",
    "my photo library",
    "a WordPress site",
    "the shipping labels",
    "an OAuth app",
    "Terraform state",
    "a Slack workspace",
    "the legal contracts",
    "GPU servers",
    "a Redis cluster",
];

const PLACES: [&str; 30] = [
    "AWS",
    "Azure",
    "Google Cloud",
    "Kubernetes",
    "a small startup",
    "a Windows laptop",
    "macOS",
    "Ubuntu",
    "a hospital",
    "a bank",
    "a school",
    "production",
    "a staging environment",
    "GitHub Actions",
    "a Raspberry Pi",
    "an airgapped network",
    "the European Union",
    "a shared hosting plan",
    "Excel",
    "a team of fifty people",
    "Heroku",
    "a home network",
    "an online shop",
    "Jenkins",
    "a government agency",
    "a nonprofit",
    "an iPhone",
    "Android",
    "a multi-tenant SaaS",
    "a weekend project",
];

/// Distinct questions there are.
pub const COUNT: usize = TEMPLATES.len() * VERBS.len() * OBJECTS.len() * PLACES.len();
/// Coprime with `COUNT`: consecutive `i` land on unrelated slot combinations.
const STRIDE: usize = 104_729;

fn slots(i: usize) -> (usize, &'static str, &'static str, &'static str) {
    let mut n = (i % COUNT) * STRIDE % COUNT;
    let place = PLACES[n % PLACES.len()];
    n /= PLACES.len();
    let object = OBJECTS[n % OBJECTS.len()];
    n /= OBJECTS.len();
    let verb = VERBS[n % VERBS.len()];
    n /= VERBS.len();
    (n % TEMPLATES.len(), verb, object, place)
}

fn fill(template: &str, verb: &str, object: &str, place: &str) -> String {
    template.replace("{v}", verb).replace("{o}", object).replace("{p}", place)
}

/// Question `i` (distinct for `i < COUNT`).
pub fn question(i: usize) -> String {
    let (t, v, o, p) = slots(i);
    fill(TEMPLATES[t].0, v, o, p)
}

/// A paraphrase of question `i`: the same slots in the pair's other template.
pub fn paraphrase(i: usize) -> String {
    let (t, v, o, p) = slots(i);
    fill(TEMPLATES[t].1, v, o, p)
}
