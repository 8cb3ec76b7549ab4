//! Topics of a document and MQTT-style topic filters (DESIGN §4, MQTT 3.1.1 §4.7).
//!
//! A topic names one leaf: its positional path without the leading `/`, then its value
//! (`locations/0/country/France`, `active/true`, `_id/user-42`).

use serde_json::{Map, Value};

/// Longest accepted filter, in bytes.
pub const MAX_FILTER_BYTES: usize = 4096;

/// Why a topic filter was refused; the message is the `reason` of a 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The empty filter.
    #[error("topic filter must not be empty")]
    Empty,
    /// Over [`MAX_FILTER_BYTES`].
    #[error("topic filter is {0} bytes long; the limit is 4096")]
    TooLong(usize),
    /// `#` (or a last-level `*`) not standing alone as the last level.
    #[error("invalid topic filter {0:?}: '#' must be the whole last level")]
    MisplacedHash(String),
    /// `+` sharing a level with other characters.
    #[error("invalid topic filter {0:?}: '+' must be a whole level")]
    MisplacedPlus(String),
}

/// One level of a parsed filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Level {
    /// Matches exactly this level.
    Exact(String),
    /// `+` (or a non-last `*`): exactly one level, whatever it is.
    One,
    /// `#` (or a last `*`): any number of levels, including none; always last.
    Many,
}

/// A parsed topic filter.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter {
    levels: Vec<Level>,
    text: String,
}

impl TopicFilter {
    /// Parses a filter: a leading `/` is ignored; `+` is a whole level; `#` is a whole, last
    /// level; `*` is an alias of `#` as the last level and of `+` elsewhere.
    pub fn parse(filter: &str) -> Result<Self, FilterError> {
        if filter.is_empty() {
            return Err(FilterError::Empty);
        }
        if filter.len() > MAX_FILTER_BYTES {
            return Err(FilterError::TooLong(filter.len()));
        }
        let rest = filter.strip_prefix('/').unwrap_or(filter);
        if rest.is_empty() {
            return Err(FilterError::Empty);
        }
        let count = rest.split('/').count();
        let mut levels = Vec::with_capacity(count);
        for (i, level) in rest.split('/').enumerate() {
            let last = i + 1 == count;
            let parsed = match level {
                "#" if last => Level::Many,
                "+" => Level::One,
                "*" if last => Level::Many,
                "*" => Level::One,
                _ if level.contains('#') => {
                    return Err(FilterError::MisplacedHash(filter.to_owned()))
                }
                _ if level.contains('+') => {
                    return Err(FilterError::MisplacedPlus(filter.to_owned()))
                }
                _ => Level::Exact(level.to_owned()),
            };
            levels.push(parsed);
        }
        Ok(TopicFilter {
            levels,
            text: filter.to_owned(),
        })
    }

    /// Whether `topic` matches. A filter whose first level is a wildcard never matches a topic
    /// whose first level starts with `$`. `#` also matches its parent level (`a/#` matches `a`).
    pub fn matches(&self, topic: &str) -> bool {
        let topic = topic.strip_prefix('/').unwrap_or(topic);
        if matches!(self.levels.first(), Some(Level::One | Level::Many)) && topic.starts_with('$') {
            return false;
        }
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Many => return true,
                Level::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Level::Exact(want) => match parts.next() {
                    Some(part) if part == want => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }

    /// The parsed levels, for a subscription trie.
    pub fn levels(&self) -> &[Level] {
        &self.levels
    }

    /// The filter as given.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// The topic text of a scalar value: strings as they are, numbers in their JSON form,
/// `true`, `false`, `null`.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(true) => "true".to_owned(),
        Value::Bool(false) => "false".to_owned(),
        Value::Null => "null".to_owned(),
        // Not leaves; their compact JSON, should they ever get here.
        Value::Array(_) | Value::Object(_) => value.to_string(),
    }
}

/// Every topic of a document revision: `_id/<id>`, then one per scalar leaf of `body`
/// (positional path without the leading `/`, a `/`, the value text).
pub fn topics(id: &str, body: &Map<String, Value>) -> Vec<String> {
    let leaves = crate::path::leaf_values(body);
    let mut out = Vec::with_capacity(leaves.len() + 1);
    out.push(format!("_id/{id}"));
    for (pointer, value) in leaves {
        let path = pointer.strip_prefix('/').unwrap_or(&pointer);
        let text = value_text(value);
        let mut topic = String::with_capacity(path.len() + 1 + text.len());
        topic.push_str(path);
        topic.push('/');
        topic.push_str(&text);
        out.push(topic);
    }
    out
}

/// A set of topic filters, each carrying a value, matched against topics in time that grows
/// with the topic's depth, not with the number of filters (a trie of filter levels).
#[derive(Debug, Clone)]
pub struct TopicTrie<T> {
    root: TrieNode<T>,
    len: usize,
}

#[derive(Debug, Clone)]
struct TrieNode<T> {
    exact: std::collections::HashMap<String, TrieNode<T>>,
    one: Option<Box<TrieNode<T>>>,
    /// Values of filters ending with `#` at this node.
    many: Vec<T>,
    /// Values of filters ending exactly here.
    here: Vec<T>,
}

impl<T> Default for TrieNode<T> {
    fn default() -> Self {
        Self {
            exact: Default::default(),
            one: None,
            many: Vec::new(),
            here: Vec::new(),
        }
    }
}

impl<T> Default for TopicTrie<T> {
    fn default() -> Self {
        Self {
            root: TrieNode::default(),
            len: 0,
        }
    }
}

impl<T: PartialEq> TopicTrie<T> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of (filter, value) entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set holds no filter.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `filter` with `value`.
    pub fn insert(&mut self, filter: &TopicFilter, value: T) {
        let mut node = &mut self.root;
        for level in filter.levels() {
            match level {
                Level::Exact(s) => node = node.exact.entry(s.clone()).or_default(),
                Level::One => node = node.one.get_or_insert_with(Default::default),
                Level::Many => {
                    node.many.push(value);
                    self.len += 1;
                    return;
                }
            }
        }
        node.here.push(value);
        self.len += 1;
    }

    /// Removes the entries whose value satisfies `drop` (empty branches are pruned).
    pub fn retain(&mut self, keep: &mut impl FnMut(&T) -> bool) {
        fn walk<T>(
            node: &mut TrieNode<T>,
            keep: &mut impl FnMut(&T) -> bool,
            removed: &mut usize,
        ) -> bool {
            let before = node.many.len() + node.here.len();
            node.many.retain(|v| keep(v));
            node.here.retain(|v| keep(v));
            *removed += before - node.many.len() - node.here.len();
            node.exact.retain(|_, child| !walk(child, keep, removed));
            if let Some(one) = &mut node.one {
                if walk(one, keep, removed) {
                    node.one = None;
                }
            }
            node.exact.is_empty()
                && node.one.is_none()
                && node.many.is_empty()
                && node.here.is_empty()
        }
        let mut removed = 0;
        walk(&mut self.root, keep, &mut removed);
        self.len -= removed;
    }

    /// Calls `f` with the value of every filter that matches `topic` (once per matching
    /// entry). A leading `/` is ignored; wildcards at the first level skip `$` topics.
    pub fn for_each_match(&self, topic: &str, mut f: impl FnMut(&T)) {
        let topic = topic.strip_prefix('/').unwrap_or(topic);
        let levels: Vec<&str> = topic.split('/').collect();
        let dollar = levels.first().is_some_and(|l| l.starts_with('$'));
        fn walk<'a, T>(
            node: &'a TrieNode<T>,
            levels: &[&str],
            first: bool,
            dollar: bool,
            f: &mut impl FnMut(&'a T),
        ) {
            let wild = !(first && dollar);
            if wild {
                node.many.iter().for_each(&mut *f);
            }
            let Some((head, rest)) = levels.split_first() else {
                node.here.iter().for_each(f);
                return;
            };
            if let Some(child) = node.exact.get(*head) {
                walk(child, rest, false, dollar, f);
            }
            if wild {
                if let Some(one) = &node.one {
                    walk(one, rest, false, dollar, f);
                }
            }
        }
        walk(&self.root, &levels, true, dollar, &mut f);
    }

    /// Whether any filter matches `topic`.
    pub fn matches(&self, topic: &str) -> bool {
        let mut found = false;
        self.for_each_match(topic, |_| found = true);
        found
    }
}

/// The topics a change of a document publishes (DESIGN §4): those of the previous live winner
/// (so a subscriber learns that a document left the set it watches) and of the new live
/// winner, each once, in that order; `_id/<id>` always. A deletion passes `new = None`.
pub fn change_topics(
    id: &str,
    old: Option<&Map<String, Value>>,
    new: Option<&Map<String, Value>>,
) -> Vec<String> {
    let mut out = topics(id, old.unwrap_or(&Map::new()));
    if let Some(new) = new {
        let seen: std::collections::HashSet<String> = out.iter().cloned().collect();
        out.extend(
            topics(id, new)
                .into_iter()
                .skip(1)
                .filter(|t| !seen.contains(t)),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn the_trie_agrees_with_the_filters() {
        let filters = [
            "sport/#",
            "sport/+/player1",
            "#",
            "+/+",
            "+",
            "$SYS/#",
            "a/b",
            "a/*",
            "users/+/name/#",
            "x/+/y",
        ];
        let topics = [
            "sport",
            "sport/tennis/player1",
            "a/b",
            "a",
            "$SYS/x",
            "$SYS",
            "users/u1/name/Ann",
            "x/1/y",
            "x/1/z",
            "/finance",
        ];
        let mut trie = TopicTrie::new();
        for (i, flt) in filters.iter().enumerate() {
            trie.insert(&f(flt), i);
        }
        assert_eq!(trie.len(), filters.len());
        for t in topics {
            let mut got = Vec::new();
            trie.for_each_match(t, |i| got.push(*i));
            got.sort();
            let want: Vec<usize> = (0..filters.len())
                .filter(|i| f(filters[*i]).matches(t))
                .collect();
            assert_eq!(got, want, "{t}");
        }
        trie.retain(&mut |i| *i != 2);
        assert_eq!(trie.len(), filters.len() - 1);
        assert!(!trie.matches("zzz/q/r/s"), "only # matched it");
        trie.retain(&mut |_| false);
        assert!(trie.is_empty());
    }

    proptest! {
        #[test]
        fn trie_matches_like_each_filter(
            filters in proptest::collection::vec("(a|b|\\+|\\$x)(/(a|b|\\+|#)){0,3}", 1..8),
            topic in "(a|b|\\$x)(/(a|b)){0,4}",
        ) {
            let parsed: Vec<TopicFilter> = filters.iter().filter_map(|x| TopicFilter::parse(x).ok()).collect();
            let mut trie = TopicTrie::new();
            for (i, flt) in parsed.iter().enumerate() {
                trie.insert(flt, i);
            }
            let mut got = Vec::new();
            trie.for_each_match(&topic, |i| got.push(*i));
            got.sort();
            let want: Vec<usize> = (0..parsed.len()).filter(|i| parsed[*i].matches(&topic)).collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn change_topics_cover_the_old_and_the_new_winner() {
        let old = json!({"status": "open", "n": 1});
        let new = json!({"status": "closed", "n": 1});
        let (old, new) = (old.as_object().unwrap(), new.as_object().unwrap());
        assert_eq!(
            change_topics("t", Some(old), Some(new)),
            ["_id/t", "n/1", "status/open", "status/closed"]
        );
        // A deletion: the last live revision's topics, and the id.
        assert_eq!(
            change_topics("t", Some(old), None),
            ["_id/t", "n/1", "status/open"]
        );
        // A creation.
        assert_eq!(
            change_topics("t", None, Some(new)),
            ["_id/t", "n/1", "status/closed"]
        );
        assert!(f("status/open").matches(&change_topics("t", Some(old), Some(new))[2]));
    }

    fn f(filter: &str) -> TopicFilter {
        TopicFilter::parse(filter).unwrap_or_else(|e| panic!("{filter:?}: {e}"))
    }

    fn yes(filter: &str, topic: &str) {
        assert!(
            f(filter).matches(topic),
            "{filter:?} should match {topic:?}"
        );
    }

    fn no(filter: &str, topic: &str) {
        assert!(
            !f(filter).matches(topic),
            "{filter:?} should not match {topic:?}"
        );
    }

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    // --- value_text / topics ------------------------------------------------------------------

    #[test]
    fn value_text_forms() {
        assert_eq!(value_text(&json!("France")), "France");
        assert_eq!(value_text(&json!("")), "");
        assert_eq!(value_text(&json!(42)), "42");
        assert_eq!(value_text(&json!(-7)), "-7");
        assert_eq!(value_text(&json!(1.5)), "1.5");
        assert_eq!(value_text(&json!(u64::MAX)), "18446744073709551615");
        assert_eq!(value_text(&json!(true)), "true");
        assert_eq!(value_text(&json!(false)), "false");
        assert_eq!(value_text(&json!(null)), "null");
        assert_eq!(value_text(&json!([1, "a"])), "[1,\"a\"]");
        assert_eq!(value_text(&json!({"a": 1})), "{\"a\":1}");
    }

    #[test]
    fn topics_of_a_document() {
        let body = obj(json!({
            "_id": "ignored", "_rev": "1-abc",
            "active": true,
            "age": 42,
            "locations": [{"country": "France"}, {"country": "Peru"}],
            "nick": null,
            "a/b": "x",
            "empty": [],
        }));
        assert_eq!(
            topics("user-42", &body),
            vec![
                "_id/user-42",
                "a~1b/x",
                "active/true",
                "age/42",
                "locations/0/country/France",
                "locations/1/country/Peru",
                "nick/null",
            ]
        );
        assert_eq!(topics("x", &Map::new()), vec!["_id/x"]);
    }

    #[test]
    fn topics_are_matched_by_their_filters() {
        let body = obj(json!({"users": {"u1": {"name": "Ann"}}, "status": "open"}));
        let t = topics("user-42", &body);
        assert!(t.iter().any(|t| f("users/+/name/#").matches(t)));
        assert!(t.iter().any(|t| f("status/open").matches(t)));
        assert!(t.iter().any(|t| f("_id/user-42").matches(t)));
        assert!(t.iter().any(|t| f("/_id/+").matches(t)));
        assert!(!t.iter().any(|t| f("_id/user-4").matches(t)));
    }

    // --- parse --------------------------------------------------------------------------------

    #[test]
    fn parse_levels() {
        assert_eq!(
            f("sport/+/player1").levels(),
            [
                Level::Exact("sport".into()),
                Level::One,
                Level::Exact("player1".into())
            ]
        );
        assert_eq!(f("#").levels(), [Level::Many]);
        assert_eq!(f("+").levels(), [Level::One]);
        assert_eq!(
            f("+/tennis/#").levels(),
            [Level::One, Level::Exact("tennis".into()), Level::Many]
        );
        assert_eq!(
            f("a//b").levels(),
            [
                Level::Exact("a".into()),
                Level::Exact("".into()),
                Level::Exact("b".into())
            ]
        );
        assert_eq!(
            f("a/").levels(),
            [Level::Exact("a".into()), Level::Exact("".into())]
        );
        assert_eq!(
            f("//").levels(),
            [Level::Exact("".into()), Level::Exact("".into())]
        );
    }

    #[test]
    fn parse_star_alias() {
        assert_eq!(
            f("users/*").levels(),
            [Level::Exact("users".into()), Level::Many]
        );
        assert_eq!(f("*").levels(), [Level::Many]);
        assert_eq!(
            f("*/name/*").levels(),
            [Level::One, Level::Exact("name".into()), Level::Many]
        );
        // `*` inside a level is an ordinary character.
        assert_eq!(
            f("a*/b*c").levels(),
            [Level::Exact("a*".into()), Level::Exact("b*c".into())]
        );
    }

    #[test]
    fn parse_keeps_text_and_ignores_leading_slash() {
        let filter = f("/users/#");
        assert_eq!(filter.as_str(), "/users/#");
        assert_eq!(filter.levels(), f("users/#").levels());
        assert_eq!(f("/#").levels(), [Level::Many]);
        // Only one leading slash is stripped.
        assert_eq!(
            f("//a").levels(),
            [Level::Exact("".into()), Level::Exact("a".into())]
        );
    }

    #[test]
    fn parse_errors() {
        assert_eq!(TopicFilter::parse(""), Err(FilterError::Empty));
        assert_eq!(TopicFilter::parse("/"), Err(FilterError::Empty));
        for bad in [
            "sport/tennis#",
            "sport/tennis/#/ranking",
            "#/a",
            "a#b",
            "#a",
            "##",
            "a/#/",
            "+#",
        ] {
            assert_eq!(
                TopicFilter::parse(bad),
                Err(FilterError::MisplacedHash(bad.to_owned())),
                "{bad}"
            );
        }
        for bad in ["sport+", "+a", "a/b+/c", "++", "a/+b/#"] {
            assert_eq!(
                TopicFilter::parse(bad),
                Err(FilterError::MisplacedPlus(bad.to_owned())),
                "{bad}"
            );
        }
        let long = "a".repeat(MAX_FILTER_BYTES + 1);
        assert_eq!(
            TopicFilter::parse(&long),
            Err(FilterError::TooLong(MAX_FILTER_BYTES + 1))
        );
        assert!(TopicFilter::parse(&long[1..]).is_ok());
        let msg = FilterError::MisplacedHash("a#".into()).to_string();
        assert!(msg.contains("'#'"), "{msg}");
    }

    // --- MQTT 3.1.1 §4.7.1.2: multi-level wildcard ----------------------------------------------

    #[test]
    fn mqtt_multi_level_wildcard() {
        for topic in [
            "sport/tennis/player1",
            "sport/tennis/player1/ranking",
            "sport/tennis/player1/score/wimbledon",
        ] {
            yes("sport/tennis/player1/#", topic);
        }
        no("sport/tennis/player1/#", "sport/tennis/player2");
        no("sport/tennis/player1/#", "sport/tennis");
        yes("sport/#", "sport");
        yes("sport/#", "sport/");
        yes("sport/#", "sport/tennis/x");
        no("sport/#", "sports");
        yes("sport/tennis/#", "sport/tennis");
        yes("sport/tennis/#", "sport/tennis/x/y");
        no("sport/tennis/#", "sport");
        // "#" is valid and matches every topic.
        for topic in ["", "a", "a/b/c", "/", "//", "sport/tennis/player1"] {
            yes("#", topic);
        }
        assert!(TopicFilter::parse("sport/tennis#").is_err());
        assert!(TopicFilter::parse("sport/tennis/#/ranking").is_err());
    }

    // --- MQTT 3.1.1 §4.7.1.3: single-level wildcard ---------------------------------------------

    #[test]
    fn mqtt_single_level_wildcard() {
        // "+" is valid, alone or with other levels.
        for ok in ["+", "+/tennis/#", "sport/+/player1"] {
            assert!(TopicFilter::parse(ok).is_ok(), "{ok}");
        }
        assert!(TopicFilter::parse("sport+").is_err());
        yes("sport/tennis/+", "sport/tennis/player1");
        yes("sport/tennis/+", "sport/tennis/player2");
        no("sport/tennis/+", "sport/tennis/player1/ranking");
        no("sport/+", "sport");
        yes("sport/+", "sport/");
        yes("sport/+/player1", "sport/tennis/player1");
        no("sport/+/player1", "sport/tennis/player2");
        yes("+", "sport");
        no("+", "sport/tennis");
        yes("+/+", "a/b");
        yes("+/+", "a/");
        yes("+/+/+", "a//b");
        // MQTT: "+/+" and "/+" match "/finance"; "+" does not. Cooper ignores a leading '/' in
        // topics and filters, so "/finance" is the topic "finance" (one level) and "/+" is "+":
        // "/+" and "+" both match it and "+/+" does not. The MQTT meaning of an empty first
        // level is written with two slashes in Cooper: "//finance".
        yes("/+", "/finance");
        yes("+", "/finance");
        yes("/+", "finance");
        no("+/+", "/finance");
        yes("+/+", "//finance");
        yes("/+/+", "//finance");
        yes("//+", "//finance");
        no("+", "//finance");
    }

    // --- MQTT 3.1.1 §4.7.2: topics beginning with $ ---------------------------------------------

    #[test]
    fn mqtt_dollar_topics() {
        no("#", "$SYS/monitor/Clients");
        no("+/monitor/Clients", "$SYS/monitor/Clients");
        yes("$SYS/#", "$SYS/monitor/Clients");
        yes("$SYS/monitor/+", "$SYS/monitor/Clients");
        no("#", "$SYS");
        no("+", "$");
        no("*", "$SYS/x");
        no("*/x", "$SYS/x");
        // Only the first level matters, and a leading '/' is ignored before looking.
        no("#", "/$SYS/x");
        yes("a/#", "a/$SYS");
        yes("a/+", "a/$SYS");
        yes("#", "a$/b");
        yes("$SYS", "$SYS");
        yes("$SYS/+/Clients", "$SYS/monitor/Clients");
    }

    // --- `*` alias and Cooper examples ----------------------------------------------------------

    #[test]
    fn star_alias_matching() {
        yes("users/*", "users");
        yes("users/*", "users/u1/name/Ann");
        yes("*", "anything/at/all");
        yes("users/*/name/Ann", "users/u1/name/Ann");
        no("users/*/name/Ann", "users/u1/x/name/Ann");
        yes("users/a*", "users/a*");
        no("users/a*", "users/ab");
    }

    #[test]
    fn cooper_examples() {
        yes("users/+/name/#", "users/u1/name/Ann");
        yes("users/+/name/#", "/users/u1/name/Ann");
        no("users/+/name/#", "users/u1/email/a@b");
        // `users/+/name` matches a leaf whose value is "name", nothing deeper.
        yes("users/+/name", "users/u1/name");
        no("users/+/name", "users/u1/name/Ann");
        no("users/+/name", "users/u1");
        yes("status/open", "status/open");
        yes("/status/open", "status/open");
        no("status/open", "status/opened");
        no("status/open", "status/open/x");
        no("status/open", "status");
        yes("_id/user-42", "_id/user-42");
        yes("_id/+", "_id/user-42");
        no("_id/user-42", "_id/user-43");
        yes("locations/+/country/France", "locations/0/country/France");
        yes("active/true", "active/true");
    }

    #[test]
    fn empty_levels_match() {
        yes("a//b", "a//b");
        no("a//b", "a/b");
        yes("a/+/b", "a//b");
        yes("a/", "a/");
        no("a/", "a");
        yes("+", "");
        no("a", "");
    }

    // --- properties -----------------------------------------------------------------------------

    fn level() -> impl Strategy<Value = String> {
        "[a-z0-9$ _.~-]{0,4}"
    }

    /// A topic whose first level is not empty (a leading '/' is not a level in Cooper).
    fn topic_levels() -> impl Strategy<Value = Vec<String>> {
        (
            "[a-z0-9$][a-z0-9$ _.~-]{0,3}",
            prop::collection::vec(level(), 0..6),
        )
            .prop_map(|(first, rest)| {
                let mut levels = vec![first];
                levels.extend(rest);
                levels
            })
    }

    proptest! {
        #[test]
        fn prop_parse_never_panics(s in any::<String>()) {
            if let Ok(filter) = TopicFilter::parse(&s) {
                prop_assert_eq!(filter.as_str(), s.as_str());
                let stripped = s.strip_prefix('/').unwrap_or(&s);
                prop_assert_eq!(filter.levels().len(), stripped.split('/').count());
                let many = filter.levels().iter().filter(|l| **l == Level::Many).count();
                prop_assert!(many == 0 || (many == 1 && filter.levels().last() == Some(&Level::Many)));
                let _ = filter.matches(&s);
            }
        }

        #[test]
        fn prop_parse_wildcard_soup(s in "[/+#*a$]{0,12}") {
            if let Ok(filter) = TopicFilter::parse(&s) {
                let _ = filter.matches(&s);
                let _ = filter.matches("a/b/c");
                let _ = filter.matches("$a");
            }
        }

        #[test]
        fn prop_filter_from_own_levels_matches(
            levels in topic_levels(),
            wild in prop::collection::vec(any::<bool>(), 7),
            cut in any::<prop::sample::Index>(),
            hash in any::<bool>(),
            star in any::<bool>(),
        ) {
            let topic = levels.join("/");
            let mut parts: Vec<&str> = levels
                .iter()
                .zip(&wild)
                .map(|(l, &w)| if w { if star { "*" } else { "+" } } else { l.as_str() })
                .collect();
            if hash {
                // Keep the first `keep` levels, then `#`, which matches the rest (maybe none).
                let keep = cut.index(levels.len() + 1);
                parts.truncate(keep);
                parts.push(if star { "*" } else { "#" });
            } else if parts.last() == Some(&"*") {
                // A last `*` would mean `#`; make it `+`.
                parts.pop();
                parts.push("+");
            }
            let filter_text = parts.join("/");
            let filter = TopicFilter::parse(&filter_text).unwrap();
            let wildcard_first = matches!(filter.levels()[0], Level::One | Level::Many);
            let expected = !(wildcard_first && topic.starts_with('$'));
            prop_assert_eq!(filter.matches(&topic), expected, "{} vs {}", filter_text, topic);
            prop_assert_eq!(filter.matches(&format!("/{topic}")), expected);
            // One more level never matches a filter without `#`.
            if !hash {
                let longer = format!("{topic}/x");
                prop_assert!(!filter.matches(&longer));
            }
        }

        #[test]
        fn prop_hash_matches_all_but_dollar(topic in any::<String>()) {
            let stripped = topic.strip_prefix('/').unwrap_or(&topic);
            let expected = !stripped.starts_with('$');
            prop_assert_eq!(f("#").matches(&topic), expected);
            prop_assert_eq!(f("/#").matches(&topic), expected);
            prop_assert_eq!(f("*").matches(&topic), expected);
        }

        #[test]
        fn prop_exact_filter_matches_only_itself(a in topic_levels(), b in topic_levels()) {
            let (ta, tb) = (a.join("/"), b.join("/"));
            prop_assert!(f(&ta).matches(&ta));
            prop_assert_eq!(f(&ta).matches(&tb), ta == tb);
        }
    }
}
