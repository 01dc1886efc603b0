//! Hit guards. Embeddings put "cancel order 123" and "cancel order 124", or "is it safe" and "is it unsafe", almost on
//! top of each other, so after the nearest-neighbour step a candidate is checked word by word: its stored question must
//! not differ from the new one in numbers or dates, negation, named entities or scope words. Each guard is a cheap
//! lexical heuristic that errs towards rejecting: a rejected hit costs one upstream call, a wrong hit costs a wrong
//! answer.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::LazyLock;

/// Which guards run on a candidate hit (policy `cache_guards`); all on by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Guards {
    /// Numbers, dates and times must match as multisets: "5" matches "five", "2024-05-01" matches "May 1st, 2024".
    pub numbers: bool,
    /// A negation cue ("not", "n't", "never", "without", …) in only one, a prefixed opposite ("safe"/"unsafe") or a
    /// listed antonym ("increase"/"decrease") rejects.
    pub negation: bool,
    /// Every named entity of each (capitalised word, acronym, email, URL, identifier, product code, quoted text) must
    /// appear in the other, compared case-insensitively.
    pub entities: bool,
    /// Quantifier and scope words ("all", "some", "only", "both", "first", "last", "always", …) must match.
    pub scope: bool,
}

impl Default for Guards {
    fn default() -> Self {
        Self { numbers: true, negation: true, entities: true, scope: true }
    }
}

impl Guards {
    /// No guard: every candidate above the similarity threshold is served.
    pub const OFF: Guards = Guards { numbers: false, negation: false, entities: false, scope: false };
}

/// Why a candidate was rejected: the first guard that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Numbers,
    Negation,
    Entities,
    Scope,
}

impl Rejection {
    /// Every rejection, in the order the guards run.
    pub const ALL: [Rejection; 4] = [Rejection::Numbers, Rejection::Negation, Rejection::Entities, Rejection::Scope];

    /// A low-cardinality metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Numbers => "numbers",
            Rejection::Negation => "negation",
            Rejection::Entities => "entities",
            Rejection::Scope => "scope",
        }
    }
}

/// Ok when the candidate's question may answer the query. Symmetric in its two questions.
pub fn check(query: &str, candidate: &str, guards: Guards) -> Result<(), Rejection> {
    if guards == Guards::OFF || query == candidate {
        return Ok(());
    }
    let q = Analysis::new(query);
    let c = Analysis::new(candidate);
    if guards.numbers && !numbers_match(&q, &c) {
        return Err(Rejection::Numbers);
    }
    if guards.negation && !negation_match(&q, &c) {
        return Err(Rejection::Negation);
    }
    if guards.entities && !(entities_found(&q, &c) && entities_found(&c, &q)) {
        return Err(Rejection::Entities);
    }
    if guards.scope && q.scope != c.scope {
        return Err(Rejection::Scope);
    }
    Ok(())
}

fn numbers_match(a: &Analysis, b: &Analysis) -> bool {
    // A weak number ("one", "first", "twice", …) may or may not be a number: the count of each value on one side is a
    // range, and the two ranges must overlap.
    for key in a.numbers.keys().chain(b.numbers.keys()) {
        let (sa, wa) = a.numbers.get(key).copied().unwrap_or_default();
        let (sb, wb) = b.numbers.get(key).copied().unwrap_or_default();
        if sa > sb.saturating_add(wb) || sb > sa.saturating_add(wa) {
            return false;
        }
    }
    if a.dates != b.dates {
        return false;
    }
    // "every day" vs "every week": only when each names a unit of time the other does not.
    !(a.units.difference(&b.units).next().is_some() && b.units.difference(&a.units).next().is_some())
}

fn negation_match(a: &Analysis, b: &Analysis) -> bool {
    if a.negated != b.negated {
        return false;
    }
    let only_a: BTreeSet<&str> = a.words.difference(&b.words).map(String::as_str).collect();
    let only_b: BTreeSet<&str> = b.words.difference(&a.words).map(String::as_str).collect();
    if prefixed_opposite(&only_a, &only_b) || prefixed_opposite(&only_b, &only_a) {
        return false;
    }
    // A listed antonym pair: one side uses one word and not the other, the other side the reverse.
    for index in 0..ANTONYMS.len() {
        let (ax, ay) = (a.antonyms.contains(&(index, 0)), a.antonyms.contains(&(index, 1)));
        let (bx, by) = (b.antonyms.contains(&(index, 0)), b.antonyms.contains(&(index, 1)));
        if (ax && !ay && by && !bx) || (ay && !ax && bx && !by) {
            return false;
        }
    }
    true
}

/// "safe" only in one, "unsafe" only in the other.
fn prefixed_opposite(only_a: &BTreeSet<&str>, only_b: &BTreeSet<&str>) -> bool {
    only_a.iter().filter(|w| w.chars().count() >= 3).any(|w| {
        NEGATING_PREFIXES.iter().any(|prefix| {
            let mut prefixed = String::with_capacity(prefix.len() + w.len());
            prefixed.push_str(prefix);
            prefixed.push_str(w);
            only_b.contains(prefixed.as_str())
        })
    })
}

fn entities_found(a: &Analysis, b: &Analysis) -> bool {
    a.entities.iter().all(|entity| {
        b.keys.contains(&entity.key)
            || b.keys.contains(singular(&entity.key))
            || entity.alt.as_ref().is_some_and(|alt| b.keys.contains(alt))
    })
}

/// An entity and, for one inside a hyphenated or dotted token ("Wi" in "Wi-Fi"), the whole token joined ("wifi").
#[derive(Debug)]
struct Entity {
    key: String,
    alt: Option<String>,
}

/// What the guards compare, extracted from one question.
#[derive(Debug, Default)]
struct Analysis {
    /// Lowercase forms an entity of the other question may match: words, singulars, whole and joined tokens, codes.
    keys: HashSet<String>,
    entities: Vec<Entity>,
    /// Canonical number -> (strong count, weak count).
    numbers: BTreeMap<String, (u32, u32)>,
    /// Named days and months, and "today", "tomorrow", ….
    dates: BTreeSet<&'static str>,
    /// Units of time: day, week, month, ….
    units: BTreeSet<&'static str>,
    negated: bool,
    /// Lowercase alphabetic words.
    words: BTreeSet<String>,
    /// (index in ANTONYMS, which side) for every antonym word present.
    antonyms: BTreeSet<(usize, u8)>,
    scope: BTreeSet<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Word,
    Number,
    /// Letters and digits mixed: "ABC123", "Q3", "2FA", "gpt-4o"'s "4o".
    Code,
}

#[derive(Debug)]
struct Token {
    /// As written (for words: case kept); canonical value for numbers.
    text: String,
    lower: String,
    kind: Kind,
    /// Numbers: written as an ordinal ("1st").
    ordinal: bool,
    /// Words: first word of a sentence.
    sentence_start: bool,
    /// Whole whitespace-separated token this came from, joined to its letters and digits, when it had more than one part.
    joined: Option<String>,
}

impl Analysis {
    fn new(text: &str) -> Self {
        let mut out = Analysis::default();
        let tokens = lex(text, &mut out);
        out.quoted(text);
        out.numbers_and_dates(&tokens);
        out.words_and_scope(&tokens);
        out.named_entities(&tokens);
        out
    }

    fn add_number(&mut self, value: String, weak: bool) {
        let entry = self.numbers.entry(value).or_default();
        if weak {
            entry.1 = entry.1.saturating_add(1);
        } else {
            entry.0 = entry.0.saturating_add(1);
        }
    }

    fn add_entity(&mut self, key: String, alt: Option<String>) {
        if !key.is_empty() {
            self.entities.push(Entity { key, alt });
        }
    }

    /// Text in double quotes, backticks or single quotes at word edges: every word of it is an entity.
    fn quoted(&mut self, text: &str) {
        let chars: Vec<char> = text.chars().collect();
        let mut open: Option<(char, usize)> = None;
        for (i, &c) in chars.iter().enumerate() {
            let before = if i == 0 { None } else { chars.get(i - 1).copied() };
            let after = chars.get(i + 1).copied();
            match open {
                None => {
                    let opens = matches!(c, '"' | '“' | '`' | '‘' | '«')
                        || (c == '\''
                            && before.is_none_or(|b| !b.is_alphanumeric())
                            && after.is_some_and(char::is_alphanumeric));
                    if opens {
                        open = Some((c, i + 1));
                    }
                }
                Some((opener, start)) => {
                    let closes = match opener {
                        '"' => c == '"',
                        '“' => c == '”' || c == '"',
                        '`' => c == '`',
                        '‘' => c == '’',
                        '«' => c == '»',
                        _ => c == '\'' && after.is_none_or(|a| !a.is_alphanumeric()),
                    };
                    if closes {
                        let inner: String = chars.get(start..i).unwrap_or_default().iter().collect();
                        for word in inner.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
                            let lower = word.to_lowercase();
                            self.keys.insert(lower.clone());
                            self.add_entity(lower, None);
                        }
                        open = None;
                    }
                }
            }
        }
    }

    fn numbers_and_dates(&mut self, tokens: &[Token]) {
        let is_numeric =
            |i: usize| tokens.get(i).is_some_and(|t| t.kind == Kind::Number || ordinal_word(&t.lower).is_some());
        let is_of = |i: usize| tokens.get(i).is_some_and(|t| t.lower == "of");
        // "May 1", "1 May", "the 1st of May"
        let near_number = |i: usize| {
            (i > 0 && is_numeric(i - 1)) || is_numeric(i + 1) || (i > 1 && is_of(i - 1) && is_numeric(i - 2))
        };
        let mut i = 0;
        while i < tokens.len() {
            let Some(token) = tokens.get(i) else { break };
            match token.kind {
                Kind::Number => {
                    let mut value = token.text.clone();
                    // "5 million", "2.5 thousand"
                    if let Some(scale) = tokens.get(i + 1).and_then(|t| scale_word(&t.lower))
                        && let Ok(number) = value.parse::<f64>()
                    {
                        value = format_number(number * scale as f64);
                        i += 1;
                    }
                    self.add_number(value, false);
                }
                Kind::Code => {
                    for digits in token.lower.split(|c: char| !c.is_ascii_digit()).filter(|d| !d.is_empty()) {
                        self.add_number(canonical_integer(digits), false);
                    }
                }
                Kind::Word => {
                    if let Some((value, weak, used)) = number_words(tokens, i) {
                        self.add_number(value.to_string(), weak);
                        i += used;
                        continue;
                    }
                    if let Some(month) = month(&token.lower) {
                        if near_number(i) {
                            self.add_number(month.to_string(), false);
                        } else if let Some(name) = full_month(&token.lower) {
                            self.dates.insert(name);
                        }
                    } else if let Some(day) = date_word(&token.lower) {
                        self.dates.insert(day);
                    } else if let Some(unit) = time_unit(&token.lower) {
                        self.units.insert(unit);
                    }
                }
            }
            i += 1;
        }
    }

    fn words_and_scope(&mut self, tokens: &[Token]) {
        let lower = |i: usize| tokens.get(i).map_or("", |t: &Token| t.lower.as_str());
        for (i, token) in tokens.iter().enumerate() {
            if token.kind == Kind::Number {
                if token.ordinal && token.text == "1" && !near_month(tokens, i) {
                    self.scope.insert("first");
                }
                continue;
            }
            if token.kind != Kind::Word {
                continue;
            }
            let word = token.lower.as_str();
            if NEGATION_CUES.contains(&word) {
                self.negated = true;
            }
            self.words.insert(word.to_string());
            let antonyms = &mut self.antonyms;
            inflections(word, |base| {
                // "offer" is not an inflection of "off", nor "inner" of "in".
                if base != word && EXACT_ONLY.contains(&base) {
                    return;
                }
                if let Some(entries) = ANTONYM_INDEX.get(base) {
                    antonyms.extend(entries.iter().copied());
                }
            });
            let previous = if i == 0 { "" } else { lower(i - 1) };
            let next = lower(i + 1);
            let group = match word {
                "all" if previous == "at" => None,
                // "how many", "how often" ask; they do not quantify.
                "many" | "often" | "few" if previous == "how" => None,
                "all" | "every" | "each" | "everyone" | "everybody" | "everything" | "everywhere" | "entire"
                | "entirely" | "whole" => Some("all"),
                "some" | "someone" | "somebody" | "something" | "somewhere" | "several" => Some("some"),
                "few" if previous == "a" => Some("some"),
                "few" => Some("few"),
                "many" | "numerous" => Some("many"),
                "most" if previous == "at" => Some("at most"),
                "most" if next == "recent" || next == "recently" => Some("last"),
                "most" => Some("most"),
                "least" if previous == "at" => Some("at least"),
                "only" | "solely" | "exclusively" => Some("only"),
                "both" => Some("both"),
                "either" => Some("either"),
                "neither" => Some("neither"),
                "none" => Some("none"),
                "first" if !near_month(tokens, i) => Some("first"),
                "last" if previous == "at" => None,
                "last" | "latest" => Some("last"),
                "next" => Some("next"),
                "previous" => Some("previous"),
                "always" => Some("always"),
                "sometimes" | "occasionally" => Some("sometimes"),
                "usually" | "often" | "normally" | "typically" | "frequently" => Some("usually"),
                "rarely" | "seldom" => Some("rarely"),
                "except" | "excluding" => Some("except"),
                _ => None,
            };
            if let Some(group) = group {
                self.scope.insert(group);
            }
        }
    }

    fn named_entities(&mut self, tokens: &[Token]) {
        let long_words: Vec<&Token> =
            tokens.iter().filter(|t| t.kind == Kind::Word && t.text.chars().count() >= 2).collect();
        let upper = long_words.iter().filter(|t| is_all_upper(&t.text)).count();
        let capitalised_stopwords = long_words
            .iter()
            .filter(|t| !t.sentence_start && starts_upper(&t.text) && STOPWORDS.contains(&t.lower.as_str()))
            .count();
        // Shouting and Title Case say nothing about names.
        let shouting = upper >= 3 && upper * 10 >= long_words.len() * 6;
        let title_case = capitalised_stopwords >= 2;
        for token in tokens {
            match token.kind {
                Kind::Code => self.add_entity(token.lower.clone(), token.joined.clone()),
                Kind::Number => {}
                Kind::Word => {
                    if shouting {
                        continue;
                    }
                    let mut chars = token.text.chars();
                    let first_upper = chars.next().is_some_and(char::is_uppercase);
                    let rest_upper = chars.clone().any(char::is_uppercase);
                    let length = token.text.chars().count();
                    let entity = if length >= 2 && is_all_upper(&token.text) {
                        !ACRONYM_NOISE.contains(&token.lower.as_str())
                    } else if rest_upper {
                        // camelCase, iPhone, PayPal
                        true
                    } else if first_upper && !token.sentence_start && !title_case {
                        !(length == 1 && token.lower == "i")
                            && (length == 1 || !STOPWORDS.contains(&token.lower.as_str()))
                    } else {
                        false
                    };
                    if entity {
                        self.add_entity(token.lower.clone(), token.joined.clone());
                    }
                }
            }
        }
    }
}

fn near_month(tokens: &[Token], i: usize) -> bool {
    let is_month = |j: usize| tokens.get(j).is_some_and(|t| t.kind == Kind::Word && month(&t.lower).is_some());
    (i > 0 && is_month(i - 1))
        || is_month(i + 1)
        || (i > 1 && is_month(i - 2) && tokens.get(i - 1).is_some_and(|t| t.lower == "of"))
        || (is_month(i + 2) && tokens.get(i + 1).is_some_and(|t| t.lower == "of"))
}

fn is_all_upper(text: &str) -> bool {
    text.chars().any(char::is_alphabetic) && !text.chars().any(char::is_lowercase)
}

fn starts_upper(text: &str) -> bool {
    text.chars().next().is_some_and(char::is_uppercase)
}

/// Splits a question into words, numbers and codes, and records in `out` the whole-token forms (keys, compound
/// entities such as emails and identifiers) and negation written as a contraction.
fn lex(text: &str, out: &mut Analysis) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut sentence_start = true;
    for raw in text.split_whitespace() {
        let raw: String = raw.chars().map(|c| if matches!(c, '’' | '‘' | 'ʼ') { '\'' } else { c }).collect();
        let core = raw.trim_matches(|c: char| !c.is_alphanumeric());
        let ends_sentence = {
            let tail = raw.trim_end_matches(['"', '\'', ')', ']', '”', '*', '`']);
            tail.ends_with(['.', '?', '!', ':', ';']) || core.is_empty()
        };
        if core.is_empty() {
            sentence_start = true;
            continue;
        }
        let lower_core = core.to_lowercase();
        out.keys.insert(lower_core.clone());
        let joined: String = lower_core.chars().filter(|c| c.is_alphanumeric()).collect();
        out.keys.insert(joined.clone());
        if is_compound(core) {
            let key = lower_core.trim_end_matches("()").to_string();
            out.add_entity(key, Some(joined.clone()));
        }
        if lower_core.ends_with("n't") || NEGATED_FORMS.contains(&lower_core.as_str()) {
            out.negated = true;
        }
        let core = strip_contraction(core);
        let before = tokens.len();
        scan(&core, sentence_start, &mut tokens);
        let parts = tokens.len() - before;
        for token in tokens.iter_mut().skip(before) {
            out.keys.insert(token.lower.clone());
            out.keys.insert(singular(&token.lower).to_string());
            if parts > 1 {
                token.joined = Some(joined.clone());
            }
        }
        sentence_start = ends_sentence;
    }
    tokens
}

/// Emails, URLs, identifiers (snake_case, a::b, file.name), not abbreviations such as "e.g.".
fn is_compound(core: &str) -> bool {
    if core.contains('@') || core.contains("://") || core.contains('_') || core.contains("::") {
        return true;
    }
    let lower = core.to_lowercase();
    if lower.starts_with("www.") {
        return true;
    }
    let chars: Vec<char> = core.chars().collect();
    let dotted = chars.windows(3).any(|w| matches!(w, [a, '.', b] if a.is_alphabetic() && b.is_alphabetic()));
    dotted && core.split('.').any(|part| part.chars().count() > 2)
}

/// "what's" -> "what", "didn't" -> "did", "Australia's" -> "Australia", "O'Brien" -> "OBrien".
fn strip_contraction(core: &str) -> String {
    if let Some(at) = core.rfind('\'') {
        let (head, tail) = (core.get(..at).unwrap_or_default(), core.get(at + 1..).unwrap_or_default());
        let tail_lower = tail.to_lowercase();
        if tail_lower == "t"
            && let Some(stem) = head.strip_suffix(['n', 'N'])
        {
            return stem.replace('\'', "");
        }
        if matches!(tail_lower.as_str(), "s" | "m" | "re" | "ve" | "ll" | "d" | "t") {
            return head.replace('\'', "");
        }
    }
    core.replace('\'', "")
}

/// Cuts a token into runs of letters and digits; digits keep their separators ("1,000", "3.11").
fn scan(core: &str, sentence_start: bool, tokens: &mut Vec<Token>) {
    let chars: Vec<char> = core.chars().collect();
    let mut runs: Vec<String> = Vec::new();
    let mut current = String::new();
    for (i, &c) in chars.iter().enumerate() {
        let before_digit = i > 0 && chars.get(i - 1).is_some_and(char::is_ascii_digit);
        let after_digit = chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if c.is_alphanumeric() || (matches!(c, '.' | ',') && before_digit && after_digit) {
            current.push(c);
        } else if !current.is_empty() {
            runs.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        runs.push(current);
    }
    for (index, run) in runs.into_iter().enumerate() {
        classify(run, sentence_start && index == 0, tokens);
    }
}

fn classify(run: String, sentence_start: bool, tokens: &mut Vec<Token>) {
    let lower = run.to_lowercase();
    let has_digit = run.chars().any(|c| c.is_ascii_digit());
    let has_letter = run.chars().any(|c| c.is_alphanumeric() && !c.is_ascii_digit());
    let word = |text: String, lower: String, sentence_start: bool| Token {
        text,
        lower,
        kind: Kind::Word,
        ordinal: false,
        sentence_start,
        joined: None,
    };
    let number = |value: String, ordinal: bool| Token {
        lower: value.clone(),
        text: value,
        kind: Kind::Number,
        ordinal,
        sentence_start: false,
        joined: None,
    };
    if !has_digit {
        tokens.push(word(run, lower, sentence_start));
        return;
    }
    if !has_letter {
        for value in canonical_numbers(&run) {
            tokens.push(number(value, false));
        }
        return;
    }
    // Digits then letters: "1st", "9am", "16GB", "10k", "1990s"; anything else mixed is a code.
    let split = lower.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ',')).unwrap_or(lower.len());
    let (digits, suffix) = (lower.get(..split).unwrap_or_default(), lower.get(split..).unwrap_or_default());
    let simple_suffix = !digits.is_empty() && !suffix.is_empty() && suffix.chars().all(char::is_alphabetic);
    if simple_suffix && matches!(suffix, "st" | "nd" | "rd" | "th") {
        for value in canonical_numbers(digits) {
            tokens.push(number(value, true));
        }
    } else if simple_suffix && suffix == "k" {
        let value = digits.replace(',', "").parse::<f64>().map(|n| format_number(n * 1000.0));
        tokens.push(number(value.unwrap_or_else(|_| digits.to_string()), false));
    } else if simple_suffix && UNIT_SUFFIXES.contains(&suffix) {
        for value in canonical_numbers(digits) {
            tokens.push(number(value, false));
        }
        // Lowercase, so that "GB" in "16GB" is a unit and not an acronym.
        tokens.push(word(suffix.to_string(), suffix.to_string(), false));
    } else {
        tokens.push(Token { text: run, lower, kind: Kind::Code, ordinal: false, sentence_start: false, joined: None });
    }
}

/// "1,000" -> 1000, "05" -> 5, "5.00" -> 5, "3.10" stays (a version), "1.2.3" -> 1.2.3, "1,5" -> 1 and 5.
fn canonical_numbers(raw: &str) -> Vec<String> {
    let raw = raw.trim_matches(|c: char| !c.is_ascii_digit());
    let groups: Vec<&str> = raw.split(',').collect();
    let thousands = groups.len() > 1
        && groups.iter().skip(1).enumerate().all(|(i, g)| {
            let digits = if i + 2 == groups.len() { g.split('.').next().unwrap_or_default() } else { g };
            digits.len() == 3 && digits.chars().all(|c| c.is_ascii_digit())
        });
    let parts: Vec<String> =
        if thousands { vec![raw.replace(',', "")] } else { groups.iter().map(|g| g.to_string()).collect() };
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .map(|part| {
            let pieces: Vec<&str> = part.split('.').collect();
            match pieces.as_slice() {
                [int] => canonical_integer(int),
                [int, frac] if frac.chars().all(|c| c == '0') => canonical_integer(int),
                [int, frac] => format!("{}.{frac}", canonical_integer(int)),
                many => many.iter().map(|p| canonical_integer(p)).collect::<Vec<_>>().join("."),
            }
        })
        .collect()
}

fn canonical_integer(digits: &str) -> String {
    let trimmed = digits.trim_start_matches('0');
    if trimmed.is_empty() { "0".to_string() } else { trimmed.to_string() }
}

fn format_number(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value}")
    }
}

/// A run of number words from `start`: (value, weak, tokens used). "twenty-five" -> 25, "a hundred" -> 100,
/// "two thousand and five" -> 2005, "third" -> 3; a lone "one", "first", "second" or "twice" is weak.
fn number_words(tokens: &[Token], start: usize) -> Option<(u64, bool, usize)> {
    let word = |i: usize| tokens.get(i).filter(|t| t.kind == Kind::Word).map(|t| t.lower.as_str());
    let first = word(start)?;
    if let Some(value) = match first {
        "twice" | "double" => Some(2),
        _ => None,
    } {
        return Some((value, true, 1));
    }
    let mut i = start;
    if first == "a" {
        if !matches!(word(start + 1), Some("hundred" | "thousand" | "million" | "billion" | "dozen")) {
            return None;
        }
        i += 1;
    }
    let (mut total, mut current, mut used_words) = (0u64, 0u64, 0usize);
    let mut last_was_scale = false;
    let mut weak_word = false;
    while let Some(w) = word(i) {
        if let Some(value) = unit_word(w) {
            let fits = current.is_multiple_of(100) || (current.is_multiple_of(10) && current % 100 >= 20 && value < 10);
            if !fits {
                break;
            }
            current = current.saturating_add(value);
            weak_word = w == "one";
        } else if let Some(value) = tens_word(w) {
            if !current.is_multiple_of(100) {
                break;
            }
            current = current.saturating_add(value);
            weak_word = false;
        } else if w == "hundred" {
            current = current.max(1).saturating_mul(100);
            weak_word = false;
        } else if w == "dozen" {
            current = current.max(1).saturating_mul(12);
            weak_word = false;
        } else if let Some(scale) = scale_word(w).filter(|s| *s >= 1000) {
            total = total.saturating_add(current.max(1).saturating_mul(scale));
            current = 0;
            weak_word = false;
            last_was_scale = true;
            used_words += 1;
            i += 1;
            continue;
        } else if let Some(value) = ordinal_word(w) {
            let fits = current.is_multiple_of(100) || (current.is_multiple_of(10) && value < 10);
            if !fits {
                break;
            }
            current = current.saturating_add(value);
            weak_word = matches!(w, "first" | "second");
            used_words += 1;
            i += 1;
            break;
        } else if w == "and" && used_words > 0 && last_was_scale_or_hundred(last_was_scale, current) {
            if word(i + 1).is_some_and(|n| unit_word(n).is_some() || tens_word(n).is_some()) {
                i += 1;
                continue;
            }
            break;
        } else {
            break;
        }
        last_was_scale = false;
        used_words += 1;
        i += 1;
    }
    if used_words == 0 {
        return None;
    }
    let weak = used_words == 1 && weak_word;
    Some((total.saturating_add(current), weak, i - start))
}

fn last_was_scale_or_hundred(last_was_scale: bool, current: u64) -> bool {
    last_was_scale || (current > 0 && current.is_multiple_of(100))
}

fn unit_word(w: &str) -> Option<u64> {
    const UNITS: [&str; 20] = [
        "zero",
        "one",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "eleven",
        "twelve",
        "thirteen",
        "fourteen",
        "fifteen",
        "sixteen",
        "seventeen",
        "eighteen",
        "nineteen",
    ];
    UNITS.iter().position(|u| *u == w).map(|p| p as u64)
}

fn tens_word(w: &str) -> Option<u64> {
    const TENS: [&str; 8] = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];
    TENS.iter().position(|t| *t == w).map(|p| (p as u64 + 2) * 10)
}

fn scale_word(w: &str) -> Option<u64> {
    match w {
        "hundred" => Some(100),
        "thousand" => Some(1_000),
        "million" => Some(1_000_000),
        "billion" => Some(1_000_000_000),
        _ => None,
    }
}

fn ordinal_word(w: &str) -> Option<u64> {
    const ORDINALS: [&str; 20] = [
        "first",
        "second",
        "third",
        "fourth",
        "fifth",
        "sixth",
        "seventh",
        "eighth",
        "ninth",
        "tenth",
        "eleventh",
        "twelfth",
        "thirteenth",
        "fourteenth",
        "fifteenth",
        "sixteenth",
        "seventeenth",
        "eighteenth",
        "nineteenth",
        "twentieth",
    ];
    if let Some(p) = ORDINALS.iter().position(|o| *o == w) {
        return Some(p as u64 + 1);
    }
    match w {
        "thirtieth" => Some(30),
        "fortieth" => Some(40),
        "fiftieth" => Some(50),
        "hundredth" => Some(100),
        _ => None,
    }
}

/// Month number of a month name or abbreviation; "may", "march" and abbreviations count only next to a number.
fn month(w: &str) -> Option<u64> {
    const MONTHS: [[&str; 2]; 12] = [
        ["january", "jan"],
        ["february", "feb"],
        ["march", "mar"],
        ["april", "apr"],
        ["may", "may"],
        ["june", "jun"],
        ["july", "jul"],
        ["august", "aug"],
        ["september", "sep"],
        ["october", "oct"],
        ["november", "nov"],
        ["december", "dec"],
    ];
    if w == "sept" {
        return Some(9);
    }
    MONTHS.iter().position(|names| names.contains(&w)).map(|p| p as u64 + 1)
}

/// A month named without a number next to it ("in January"), as a date word. Not "may" (a verb far more often).
fn full_month(w: &str) -> Option<&'static str> {
    const NAMES: [&str; 11] = [
        "january",
        "february",
        "march",
        "april",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ];
    NAMES.iter().find(|name| **name == w).copied()
}

fn date_word(w: &str) -> Option<&'static str> {
    const DAYS: [&str; 12] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "today",
        "tonight",
        "tomorrow",
        "yesterday",
        "weekend",
    ];
    let singular = w.strip_suffix('s').filter(|s| s.ends_with("day") || *s == "weekend").unwrap_or(w);
    DAYS.iter().find(|d| **d == singular).copied()
}

fn time_unit(w: &str) -> Option<&'static str> {
    Some(match w {
        "minute" | "minutes" => "minute",
        "hour" | "hours" | "hourly" => "hour",
        "day" | "days" | "daily" => "day",
        "week" | "weeks" | "weekly" => "week",
        "fortnight" | "fortnightly" => "fortnight",
        "month" | "months" | "monthly" => "month",
        "quarter" | "quarters" | "quarterly" => "quarter",
        "year" | "years" | "yearly" | "annual" | "annually" => "year",
        "decade" | "decades" => "decade",
        _ => return None,
    })
}

/// "orders" -> "order" (not "class", not "bus").
fn singular(w: &str) -> &str {
    match w.strip_suffix('s') {
        Some(stem) if stem.chars().count() >= 3 && !stem.ends_with('s') && !stem.ends_with('u') => stem,
        _ => w,
    }
}

/// Calls `found` with the word and every base it may be an inflection of: "stopped" -> stop, "closing" -> close,
/// "denied" -> deny, "cheaper" -> cheap.
fn inflections(word: &str, mut found: impl FnMut(&str)) {
    found(word);
    if !word.is_ascii() || word.len() < 4 {
        return;
    }
    let mut base = String::with_capacity(word.len() + 1);
    for suffix in ["s", "es", "d", "ed", "ing", "er", "est", "ly"] {
        let Some(stem) = word.strip_suffix(suffix).filter(|stem| stem.len() >= 2) else { continue };
        found(stem);
        base.clear();
        base.push_str(stem);
        base.push('e');
        found(&base);
        if let [.., x, y] = stem.as_bytes()
            && x == y
        {
            found(stem.get(..stem.len() - 1).unwrap_or_default());
        }
        if let Some(head) = stem.strip_suffix('i') {
            base.clear();
            base.push_str(head);
            base.push('y');
            found(&base);
        }
    }
}

/// Base word -> (index in ANTONYMS, side) for every pair it is in.
static ANTONYM_INDEX: LazyLock<HashMap<&'static str, Vec<(usize, u8)>>> = LazyLock::new(|| {
    let mut index: HashMap<&'static str, Vec<(usize, u8)>> = HashMap::new();
    for (i, (x, y)) in ANTONYMS.iter().enumerate() {
        index.entry(x).or_default().push((i, 0));
        index.entry(y).or_default().push((i, 1));
    }
    index
});

/// Antonym words matched only as written, never as the base of a longer word.
const EXACT_ONLY: &[&str] =
    &["on", "off", "in", "into", "out", "up", "down", "am", "pm", "pro", "con", "max", "min", "asc", "desc", "sent"];

const NEGATING_PREFIXES: &[&str] = &["un", "in", "im", "il", "ir", "dis", "non"];

/// Pairs whose swap flips the answer. Words are bases: inflections ("stopped", "closing", "cheaper") are matched.
const ANTONYMS: &[(&str, &str)] = &[
    ("safe", "dangerous"),
    ("before", "after"),
    ("increase", "decrease"),
    ("more", "less"),
    ("more", "fewer"),
    ("maximum", "minimum"),
    ("max", "min"),
    ("allow", "deny"),
    ("allow", "block"),
    ("allow", "forbid"),
    ("permit", "forbid"),
    ("enable", "disable"),
    ("include", "exclude"),
    ("inclusive", "exclusive"),
    ("add", "remove"),
    ("add", "delete"),
    ("accept", "reject"),
    ("accept", "decline"),
    ("approve", "reject"),
    ("open", "close"),
    ("start", "stop"),
    ("start", "end"),
    ("begin", "end"),
    ("buy", "sell"),
    ("true", "false"),
    ("pass", "fail"),
    ("succeed", "fail"),
    ("success", "failure"),
    ("win", "lose"),
    ("gain", "lose"),
    ("profit", "loss"),
    ("on", "off"),
    ("in", "out"),
    ("into", "out"),
    ("up", "down"),
    ("upload", "download"),
    ("upgrade", "downgrade"),
    ("import", "export"),
    ("login", "logout"),
    ("push", "pull"),
    ("encrypt", "decrypt"),
    ("compress", "decompress"),
    ("hot", "cold"),
    ("warm", "cold"),
    ("high", "low"),
    ("fast", "slow"),
    ("quick", "slow"),
    ("big", "small"),
    ("large", "small"),
    ("cheap", "expensive"),
    ("early", "late"),
    ("above", "below"),
    ("over", "under"),
    ("inside", "outside"),
    ("internal", "external"),
    ("input", "output"),
    ("send", "receive"),
    ("sent", "received"),
    ("credit", "debit"),
    ("deposit", "withdraw"),
    ("public", "private"),
    ("mandatory", "optional"),
    ("required", "optional"),
    ("show", "hide"),
    ("visible", "hidden"),
    ("pro", "con"),
    ("advantage", "disadvantage"),
    ("best", "worst"),
    ("better", "worse"),
    ("good", "bad"),
    ("positive", "negative"),
    ("plus", "minus"),
    ("long", "short"),
    ("tall", "short"),
    ("old", "new"),
    ("ascending", "descending"),
    ("asc", "desc"),
    ("synchronous", "asynchronous"),
    ("sync", "async"),
    ("strong", "weak"),
    ("light", "dark"),
    ("light", "heavy"),
    ("left", "right"),
    ("north", "south"),
    ("east", "west"),
    ("arrive", "depart"),
    ("arrival", "departure"),
    ("enter", "exit"),
    ("join", "leave"),
    ("love", "hate"),
    ("remember", "forget"),
    ("rise", "fall"),
    ("top", "bottom"),
    ("front", "back"),
    ("forward", "backward"),
    ("am", "pm"),
    ("lowercase", "uppercase"),
    ("lower", "upper"),
    ("expand", "collapse"),
    ("attach", "detach"),
    ("inbound", "outbound"),
    ("incoming", "outgoing"),
    ("horizontal", "vertical"),
    ("male", "female"),
    ("adult", "child"),
    ("summer", "winter"),
    ("wet", "dry"),
    ("full", "empty"),
    ("same", "different"),
];

/// Words that negate the question.
const NEGATION_CUES: &[&str] = &[
    "not", "no", "never", "none", "nobody", "nothing", "nowhere", "neither", "nor", "without", "cannot", "noone",
    "non", "unable", "nope",
];

/// Contractions written without an apostrophe (the apostrophe kind, "n't", is seen before splitting).
const NEGATED_FORMS: &[&str] = &[
    "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "cant", "couldnt", "shouldnt", "wouldnt", "wont",
    "hasnt", "havent", "hadnt", "mustnt", "neednt", "aint", "shant",
];

/// Letters after a number that leave it a number: "9am", "16GB", "1990s", "24C".
const UNIT_SUFFIXES: &[&str] = &[
    "am", "pm", "s", "h", "hr", "hrs", "min", "mins", "m", "ms", "sec", "secs", "d", "y", "yr", "yrs", "kg", "g", "mg",
    "lb", "lbs", "oz", "km", "cm", "mm", "mi", "ml", "l", "gb", "mb", "kb", "tb", "gbps", "mbps", "hz", "ghz", "mhz",
    "px", "pt", "v", "w", "kw", "kwh", "mah", "c", "f", "x",
];

/// All-capital words that are not names.
const ACRONYM_NOISE: &[&str] =
    &["ok", "okay", "am", "pm", "asap", "fyi", "pls", "plz", "btw", "imo", "imho", "lol", "thx", "tldr"];

/// Capitalised mid-sentence (after a comma, in a heading) but not a name.
const STOPWORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "if", "then", "so", "is", "are", "was", "were", "be", "been", "am", "do",
    "does", "did", "done", "have", "has", "had", "can", "could", "should", "would", "will", "shall", "may", "might",
    "must", "what", "whats", "which", "who", "whom", "whose", "why", "when", "where", "how", "my", "your", "our",
    "their", "his", "her", "its", "me", "you", "we", "they", "he", "she", "it", "this", "that", "these", "those",
    "there", "here", "in", "on", "at", "to", "for", "of", "with", "from", "by", "about", "as", "into", "please", "hi",
    "hello", "hey", "thanks", "thank", "yes", "no", "not", "ok", "okay", "also", "just", "now", "let", "lets", "don",
    "doesn", "didn", "isn", "aren", "wasn", "weren", "won", "wouldn", "couldn", "shouldn", "haven", "hasn", "ca",
    "any", "all", "some", "every", "each", "tell", "give", "im",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(a: &str, b: &str) {
        assert_eq!(check(a, b, Guards::default()), Ok(()), "{a:?} vs {b:?}");
        assert_eq!(check(b, a, Guards::default()), Ok(()), "{b:?} vs {a:?}");
    }

    fn rejects(a: &str, b: &str, why: Rejection) {
        assert_eq!(check(a, b, Guards::default()), Err(why), "{a:?} vs {b:?}");
        assert_eq!(check(b, a, Guards::default()), Err(why), "{b:?} vs {a:?}");
        assert_eq!(check(a, b, Guards::OFF), Ok(()));
    }

    #[test]
    fn numbers() {
        rejects("cancel order 123", "cancel order 124", Rejection::Numbers);
        rejects("Please cancel order #48213.", "Please cancel order #48214.", Rejection::Numbers);
        rejects("How many calories are in two eggs?", "How many calories are in three eggs?", Rejection::Numbers);
        rejects("What changed in Python 3.11?", "What changed in Python 3.12?", Rejection::Numbers);
        rejects("What changed in Python 3.1?", "What changed in Python 3.10?", Rejection::Numbers);
        rejects("Why did I get charged $49.99?", "Why did I get charged $4.99?", Rejection::Numbers);
        rejects("Is the store open at 9am?", "Is the store open at 10am?", Rejection::Numbers);
        rejects("Is a 1-year warranty included?", "Is a 2-year warranty included?", Rejection::Numbers);
        rejects("Is it 5 million?", "Is it 5 thousand?", Rejection::Numbers);
        ok("What is 15% of 200?", "Calculate fifteen percent of two hundred.");
        ok("How much is shipping for orders over $1,000?", "Shipping cost for orders above 1000 dollars?");
        ok("Is a 5.00 fee charged?", "Is a 5 fee charged?");
        ok("Can I have 2 accounts?", "Can I register two accounts with one email?");
        ok("Which one is cheaper?", "Which is cheaper?");
        ok("It costs twenty-five dollars", "It costs 25 dollars");
        ok("a hundred and five", "105");
        ok("What's step two?", "What's the second step?");
        ok("Revenue of 10k", "revenue of 10,000");
        ok("Revenue of 2.5 million", "revenue of 2,500,000");
        ok("I have a dozen eggs", "I have 12 eggs");
        ok("Is the store open 24/7?", "Are you open 24 hours a day, 7 days a week?");
        ok("Do I need 16GB of RAM?", "Do I need 16 GB of RAM?");
    }

    #[test]
    fn dates() {
        ok("Can I book a flight for 2024-05-01?", "Can I book a flight for May 1st, 2024?");
        ok("Can I book a flight for 2024-05-01?", "Can I book a flight on 1 May 2024?");
        ok("Can I book for the first of May?", "Can I book for May 1?");
        rejects("Can I book a flight for 2024-05-01?", "Can I book a flight for 2024-06-01?", Rejection::Numbers);
        rejects(
            "What time is the meeting on March 3rd?",
            "What time is the meeting on March 13th?",
            Rejection::Numbers,
        );
        rejects("Weather for tomorrow in Berlin?", "Weather for today in Berlin?", Rejection::Numbers);
        rejects("Is the office closed on Monday?", "Is the office closed on Tuesday?", Rejection::Numbers);
        rejects("is the office closed on mondays", "is the office closed on tuesdays", Rejection::Numbers);
        rejects("When does the sale end in January?", "When does the sale end in February?", Rejection::Numbers);
        rejects("Should I water it every day?", "Should I water it every week?", Rejection::Numbers);
        ok("What's the recommended daily water intake?", "How much water should I drink per day?");
        ok("How long does a refund take?", "How many days does a refund take?");
        ok("May I ask a question?", "Can I ask a question?");
    }

    #[test]
    fn negation() {
        rejects("Can I return an item without a receipt?", "Can I return an item with a receipt?", Rejection::Negation);
        rejects("Is it safe to eat raw eggs?", "Is it unsafe to eat raw eggs?", Rejection::Negation);
        rejects("What if I don't pay on time?", "What if I pay on time?", Rejection::Negation);
        rejects("What if I dont pay on time?", "What if I pay on time?", Rejection::Negation);
        rejects("Why can\u{2019}t I see the files?", "Why can I see the files?", Rejection::Negation);
        rejects("Is it legal to record a call?", "Is it illegal to record a call?", Rejection::Negation);
        rejects("Is the plan refundable?", "Is the plan non-refundable?", Rejection::Negation);
        rejects("Is the plan refundable?", "Is the plan nonrefundable?", Rejection::Negation);
        rejects("Which rows are null?", "Which rows are not null?", Rejection::Negation);
        rejects("I never got the email", "I got the email", Rejection::Negation);
        rejects("How do I increase the font size?", "How do I decrease the font size?", Rejection::Negation);
        rejects("How do I enable notifications?", "How do I disable notifications?", Rejection::Negation);
        rejects("How do I turn on Bluetooth?", "How do I turn off Bluetooth?", Rejection::Negation);
        rejects("How do I log in?", "How do I log out?", Rejection::Negation);
        rejects("Why is it charging slowly?", "Why is it charging quickly?", Rejection::Negation);
        rejects("Are flights cheaper on Tuesdays?", "Are flights more expensive on Tuesdays?", Rejection::Negation);
        rejects("Should I take it before meals?", "Should I take it after meals?", Rejection::Negation);
        rejects("Who stopped the server?", "Who started the server?", Rejection::Negation);
        rejects("Why was the request denied?", "Why was the request allowed?", Rejection::Negation);
        ok("I can't log in to my account", "I'm unable to sign in.");
        ok("Why isn't my discount code working?", "My promo code won't apply at checkout, why?");
        ok("What's the weather?", "What is the weather?");
        ok("How do I stop receiving marketing emails?", "How can I unsubscribe from your newsletter?");
        ok("Is it possible to switch plans?", "Can I switch plans?");
        ok("When is it open?", "What are the opening hours?");
    }

    #[test]
    fn entities() {
        rejects(
            "How do I reset my password on Netflix?",
            "How do I reset my password on Spotify?",
            Rejection::Entities,
        );
        rejects("What's the capital of Austria?", "What's the capital of Australia?", Rejection::Entities);
        rejects("Send it to alice@example.com", "Send it to bob@example.com", Rejection::Entities);
        rejects("Is SKU ABC-123 in stock?", "Is SKU ABD-123 in stock?", Rejection::Entities);
        rejects("What does useEffect do?", "What does useState do?", Rejection::Entities);
        rejects("Is there a cafe in Terminal A?", "Is there a cafe in Terminal B?", Rejection::Entities);
        rejects(
            "How do I say \"good morning\" in French?",
            "How do I say \"good night\" in French?",
            Rejection::Entities,
        );
        rejects("What does `Array.prototype.map` do?", "What does `Array.prototype.filter` do?", Rejection::Entities);
        rejects("Open https://example.com/a in a tab", "Open https://example.com/b in a tab", Rejection::Entities);
        rejects("Is gpt-4o faster?", "Is gpt-4 faster?", Rejection::Entities);
        rejects("What goes in the Dockerfile?", "What goes in the Makefile?", Rejection::Entities);
        ok("What is the capital of Australia?", "Which city is Australia's capital?");
        ok("what is the capital of france", "What is the capital of France?");
        ok("HOW MUCH DOES SHIPPING COST TO GERMANY", "How much does shipping cost to Germany?");
        ok("How To Delete A GitHub Repository", "how to delete a github repository");
        ok("What does \"ETA\" mean?", "What does the abbreviation ETA stand for?");
        ok("How do I connect my printer to Wi-Fi?", "how do i connect my printer to wifi");
        ok("What time does the store open on Sundays?", "When do you open on Sunday?");
        ok("Hi, how do I reset my password?", "How do I reset my password?");
        ok(
            "In JavaScript, what is the difference between const and let?",
            "What is the difference between let and const in JavaScript?",
        );
        ok("Is it OK to use honey?", "Can I use honey?");
    }

    #[test]
    fn scope() {
        rejects("Can all users see my files?", "Can some users see my files?", Rejection::Scope);
        rejects("Do all plans include SSO?", "Do any plans include SSO?", Rejection::Scope);
        rejects("How do I get the first 10 rows?", "How do I get the last 10 rows?", Rejection::Scope);
        rejects("Do both parents have to sign?", "Does either parent have to sign?", Rejection::Scope);
        rejects("Can I only pay by card?", "Can I pay by card?", Rejection::Scope);
        rejects("Is shipping always free?", "Is shipping sometimes free?", Rejection::Scope);
        rejects("Can anyone join the meeting?", "Can everyone join the meeting?", Rejection::Scope);
        rejects("At least 5 items?", "At most 5 items?", Rejection::Scope);
        rejects("Transactions from last month", "Transactions from this month", Rejection::Scope);
        ok("Does the coupon apply to every item?", "Does the coupon apply to each item?");
        ok("How do I undo my last commit?", "How can I revert the most recent commit?");
        ok("Is there any way to pay later?", "Is there a way to pay later?");
        ok("No light at all when plugged in.", "No, the light stays off when plugged in.");
        ok("What's on May 1st?", "What's on the 1st of May?");
        ok("Give me a few more ideas.", "Can you suggest some other names?");
    }

    #[test]
    fn guards_can_be_switched_off_one_by_one() {
        let only = |g: fn(&mut Guards)| {
            let mut guards = Guards::OFF;
            g(&mut guards);
            guards
        };
        assert_eq!(check("order 1", "order 2", only(|g| g.numbers = true)), Err(Rejection::Numbers));
        assert_eq!(check("order 1", "order 2", only(|g| g.negation = true)), Ok(()));
        assert_eq!(check("is it safe", "is it not safe", only(|g| g.scope = true)), Ok(()));
        assert_eq!(check("Call Alice", "Call Bob", only(|g| g.entities = true)), Err(Rejection::Entities));
        assert_eq!(check("Call Alice", "Call Bob", only(|g| g.scope = true)), Ok(()));
        // The first failing guard is the one reported.
        assert_eq!(check("Call Alice 1", "Call Bob 2", Guards::default()), Err(Rejection::Numbers));
    }

    #[test]
    fn policy_shape() {
        let all: Guards = serde_json::from_str("{}").unwrap();
        assert_eq!(all, Guards::default());
        assert!(all.numbers && all.negation && all.entities && all.scope);
        let some: Guards = serde_json::from_str(r#"{"scope": false}"#).unwrap();
        assert_eq!(some, Guards { scope: false, ..Guards::default() });
        assert!(serde_json::from_str::<Guards>(r#"{"typo": true}"#).is_err());
        let labels: Vec<&str> = Rejection::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels, ["numbers", "negation", "entities", "scope"]);
    }

    /// A small deterministic generator (xorshift), so the property test needs no dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[(self.next() % items.len() as u64) as usize]
        }
    }

    #[test]
    fn any_text_matches_itself_and_nothing_panics() {
        let pieces = [
            "a",
            "Zürich",
            "İstanbul",
            "ß",
            "ǅ",
            "’",
            "'",
            "\"",
            "`",
            "“",
            "”",
            "«",
            "»",
            "n't",
            "'s",
            "1",
            "0",
            "١٢",
            "½",
            "²",
            "3.",
            ".5",
            "1,",
            ",000",
            "1,5",
            "1.2.3",
            "-",
            "—",
            "@",
            "://",
            "_",
            "::",
            "()",
            "$",
            "%",
            "#",
            "\u{0}",
            "\u{200b}",
            "\u{fe0f}",
            "😀",
            "👩\u{200d}💻",
            "日本語",
            "한국어",
            "עברית",
            "العربية",
            "e\u{301}",
            "𝔘𝔫𝔦",
            "ⅷ",
            "Ⅻ",
            "st",
            "nd",
            "k",
            "am",
            "GB",
            "May",
            "first",
            "twenty",
            "hundred",
            "a",
            "and",
            "dozen",
            "twice",
            "not",
            "unsafe",
            "safe",
            "all",
            "ALL",
            "Nobody",
            "camelCase",
            "snake_case",
            "x.y",
            "e.g.",
            "U.S.",
            "99999999999999999999999999",
            "1e308",
            "ffffffff",
            ".",
            "?",
            "!",
            ":",
            " ",
            "\n",
            "\t",
        ];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..3000 {
            let mut text = String::new();
            for _ in 0..(rng.next() % 24) {
                text.push_str(rng.pick(&pieces));
                if rng.next().is_multiple_of(3) {
                    text.push(' ');
                }
            }
            // Sometimes arbitrary code points, including lone combining marks.
            if round % 4 == 0 {
                for _ in 0..(rng.next() % 16) {
                    if let Some(c) = char::from_u32((rng.next() % 0x11_0000) as u32) {
                        text.push(c);
                    }
                }
            }
            assert_eq!(check(&text, &text, Guards::default()), Ok(()), "{text:?}");
            // A copy that is not byte-identical takes the full path.
            let spaced = format!(" {text}");
            assert_eq!(check(&spaced, &text, Guards::default()), Ok(()), "{text:?}");
            let other: String = text.chars().rev().collect();
            let _ = check(&text, &other, Guards::default());
        }
    }

    #[test]
    fn is_fast() {
        let a = "Hi, I ordered 3 blue jackets (order #48213) on May 1st, 2024 but only two arrived - can I get a \
                 refund without a receipt via PayPal to alice@example.com?";
        let b = "Hello, I ordered three blue jackets (order 48213) on 2024-05-01 and only 2 arrived; can I be \
                 refunded to alice@example.com through PayPal if I have no receipt?";
        // The best of a few rounds, so that tests running alongside do not make it flaky.
        let each = (0..5)
            .map(|_| {
                let start = std::time::Instant::now();
                for _ in 0..100 {
                    let _ = check(a, b, Guards::default());
                }
                start.elapsed() / 100
            })
            .min()
            .unwrap();
        // Generous for unoptimised builds on a slow machine; release builds are far below.
        assert!(each < std::time::Duration::from_millis(5), "{each:?} per check");
    }
}
