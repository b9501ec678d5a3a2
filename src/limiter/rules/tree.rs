//! The rule tree of one domain, and its matching, as envoyproxy/ratelimit
//! defines them: each level of the tree matches one entry of a descriptor,
//! by exact key and value first, then by the first wildcard pattern (in
//! rule order) whose key is the entry's and whose `*`s match its value,
//! then by key alone (any value). The limits returned are those of the node
//! reached by the descriptor's last entry: a descriptor longer or shorter
//! than the rule's path matches nothing. A node may hold several limits
//! (our extension), and both limits and children.

use std::collections::HashMap;
use std::sync::Arc;

use super::super::request::Entry;
use crate::policy::{Label, Policy};

/// One limit on a node; `rank` orders the limits of a request as the rules
/// file lists them (so headers list policies in file order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    pub rank: u32,
    pub policy: Arc<Policy>,
}

/// How one level of a rule's path matches an entry's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    /// Exactly this value.
    Exact(String),
    /// A pattern whose `*`s match any run of characters.
    Wildcard(String),
    /// Any value (a rule with a key and no value).
    Any,
}

impl ValueMatch {
    /// `Exact`, or `Wildcard` when the value holds a `*`.
    pub fn of(value: &str) -> Self {
        if value.contains('*') {
            ValueMatch::Wildcard(value.to_owned())
        } else {
            ValueMatch::Exact(value.to_owned())
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// key -> value -> node: looked up without building a composite string.
    exact: HashMap<String, HashMap<String, Node>>,
    /// (key, value pattern, node), in rule order: the first match wins.
    wildcards: Vec<(String, String, Node)>,
    /// key -> node, for any value.
    any: HashMap<String, Node>,
    limits: Vec<Limit>,
    /// What an envoyproxy/ratelimit rule says beyond its limits.
    rule: Option<Arc<Rule>>,
    /// A wildcard node whose matching values share one counter
    /// (`share_threshold`).
    share_threshold: bool,
}

/// What an envoyproxy/ratelimit rule on a node says beyond its limits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rule {
    /// `rate_limit.name`: a target for other rules' `replaces`.
    pub name: Option<String>,
    /// Names of the limits this one replaces when both match one request.
    pub replaces: Vec<String>,
    /// `unlimited: true`: always allowed, never counted.
    pub unlimited: bool,
    /// `requests_per_unit: 0`: always over the limit, never counted.
    pub ban: Option<Label>,
    /// The ban is reported, not enforced (`shadow_mode`).
    pub shadow: bool,
    /// The rule's stats key (`domain.key_value.key`).
    pub stats_key: String,
    /// Metrics name the request's values (`detailed_metric`).
    pub detailed_metric: bool,
}

/// Where a descriptor's walk through the tree ended.
#[derive(Debug, Clone, Copy)]
pub struct Walk<'a> {
    pub node: &'a Node,
    /// Whether some level matched a `share_threshold` wildcard: its
    /// pattern, not the value, then names the counter (see
    /// [`Node::counter_values`]).
    pub shared: bool,
}

impl<'a> Walk<'a> {
    pub fn limits(&self) -> &'a [Limit] {
        &self.node.limits
    }

    pub fn rule(&self) -> Option<&'a Rule> {
        self.node.rule.as_deref()
    }
}

impl Node {
    /// Adds `limit` at the node that `path` leads to, creating the nodes on
    /// the way.
    pub fn insert(&mut self, path: &[(String, ValueMatch)], limit: Limit) {
        let mut node = self;
        for (key, value) in path {
            node = node.child_mut(key, value);
        }
        node.limits.push(limit);
    }

    /// Sets the rule of the node `path` leads to; `share_threshold` marks
    /// its last level.
    pub fn set_rule(&mut self, path: &[(String, ValueMatch)], rule: Rule, share_threshold: bool) {
        let mut node = self;
        for (key, value) in path {
            node = node.child_mut(key, value);
        }
        node.rule = Some(Arc::new(rule));
        node.share_threshold = share_threshold;
    }

    /// Replaces every policy for which `change` gives a new one.
    pub fn map_policies(&mut self, change: &mut dyn FnMut(&Policy) -> Option<Policy>) {
        for limit in &mut self.limits {
            if let Some(changed) = change(&limit.policy) {
                limit.policy = Arc::new(changed);
            }
        }
        for values in self.exact.values_mut() {
            for node in values.values_mut() {
                node.map_policies(change);
            }
        }
        for (_, _, node) in &mut self.wildcards {
            node.map_policies(change);
        }
        for node in self.any.values_mut() {
            node.map_policies(change);
        }
    }

    /// Whether `path` leads to a node already (a duplicate rule).
    pub fn contains(&self, path: &[(String, ValueMatch)]) -> bool {
        let mut node = self;
        for (key, value) in path {
            let next = match value {
                ValueMatch::Exact(v) => node.exact.get(key).and_then(|m| m.get(v)),
                ValueMatch::Any => node.any.get(key),
                ValueMatch::Wildcard(p) => node
                    .wildcards
                    .iter()
                    .find(|(k, q, _)| k == key && q == p)
                    .map(|(_, _, n)| n),
            };
            match next {
                Some(next) => node = next,
                None => return false,
            }
        }
        true
    }

    fn child_mut(&mut self, key: &str, value: &ValueMatch) -> &mut Node {
        match value {
            ValueMatch::Exact(v) => self
                .exact
                .entry(key.to_owned())
                .or_default()
                .entry(v.clone())
                .or_default(),
            ValueMatch::Any => self.any.entry(key.to_owned()).or_default(),
            ValueMatch::Wildcard(pattern) => {
                let at = match self
                    .wildcards
                    .iter()
                    .position(|(k, p, _)| k == key && p == pattern)
                {
                    Some(at) => at,
                    None => {
                        self.wildcards
                            .push((key.to_owned(), pattern.clone(), Node::default()));
                        self.wildcards.len() - 1
                    }
                };
                &mut self.wildcards[at].2
            }
        }
    }

    /// The child that matches one entry, by the order of precedence, with
    /// the wildcard pattern that matched, if one did.
    fn child(&self, (key, value): &Entry) -> Option<(&Node, Option<&str>)> {
        let key: &str = key;
        if let Some(node) = self.exact.get(key).and_then(|values| values.get(value)) {
            return Some((node, None));
        }
        self.wildcards
            .iter()
            .find(|(k, pattern, _)| k == key && wildcard_match(pattern, value))
            .map(|(_, pattern, node)| (node, Some(pattern.as_str())))
            .or_else(|| self.any.get(key).map(|node| (node, None)))
    }

    /// The node reached by the last of `entries`, if the walk gets there.
    pub fn walk(&self, entries: &[Entry]) -> Option<Walk<'_>> {
        if entries.is_empty() {
            return None;
        }
        let mut walk = Walk {
            node: self,
            shared: false,
        };
        for entry in entries {
            let (next, _) = walk.node.child(entry)?;
            walk.shared |= next.share_threshold;
            walk.node = next;
        }
        Some(walk)
    }

    /// The values that name a descriptor's counter: the request's, except
    /// at `share_threshold` levels, where the pattern stands for every value
    /// it matches (so they share one counter).
    pub fn counter_values<'e>(&self, entries: &'e [Entry]) -> Vec<std::borrow::Cow<'e, str>> {
        let mut node = self;
        let mut values = Vec::with_capacity(entries.len());
        for entry in entries {
            match node.child(entry) {
                Some((next, Some(pattern))) if next.share_threshold => {
                    values.push(std::borrow::Cow::Owned(pattern.to_owned()));
                    node = next;
                }
                Some((next, _)) => {
                    values.push(std::borrow::Cow::Borrowed(entry.1.as_str()));
                    node = next;
                }
                None => values.push(std::borrow::Cow::Borrowed(entry.1.as_str())),
            }
        }
        values
    }

    /// The limits of the node reached by the last of `entries`; empty when
    /// the walk stops earlier or the node has none.
    pub fn matching(&self, entries: &[Entry]) -> &[Limit] {
        self.walk(entries).map_or(&[], |walk| walk.limits())
    }

    /// Every limit in the tree, each once per node it sits on.
    pub fn limits(&self) -> Box<dyn Iterator<Item = &Limit> + '_> {
        Box::new(
            self.limits
                .iter()
                .chain(
                    self.exact
                        .values()
                        .flat_map(|m| m.values())
                        .flat_map(Node::limits),
                )
                .chain(self.wildcards.iter().flat_map(|(_, _, n)| n.limits()))
                .chain(self.any.values().flat_map(Node::limits)),
        )
    }

    /// Whether some rule's path starts with this key at this level.
    pub fn has_key(&self, key: &str) -> bool {
        self.exact.contains_key(key)
            || self.any.contains_key(key)
            || self.wildcards.iter().any(|(k, _, _)| k == key)
    }
}

/// `pattern`'s `*`s match any run of characters (none included): anchored
/// at both ends, the parts between stars found left to right.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no star: exact
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Algorithm;
    use std::num::NonZeroU32;
    use std::time::Duration;

    fn limit(name: &str, rank: u32) -> Limit {
        Limit {
            rank,
            policy: Arc::new(
                Policy::new(
                    name,
                    Algorithm::FixedWindow,
                    NonZeroU32::new(10).unwrap(),
                    Duration::from_secs(60),
                    1,
                )
                .unwrap(),
            ),
        }
    }

    fn path(steps: &[(&str, Option<&str>)]) -> Vec<(String, ValueMatch)> {
        steps
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map_or(ValueMatch::Any, ValueMatch::of)))
            .collect()
    }

    fn request(entries: &[(&str, &str)]) -> Vec<Entry> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned().into(), (*v).to_owned()))
            .collect()
    }

    fn names(tree: &Node, entries: &[(&str, &str)]) -> Vec<String> {
        tree.matching(&request(entries))
            .iter()
            .map(|l| l.policy.name().to_owned())
            .collect()
    }

    fn tree() -> Node {
        let mut tree = Node::default();
        tree.insert(&path(&[("user", Some("vip"))]), limit("vip", 0));
        tree.insert(&path(&[("user", Some("bot-*"))]), limit("bots", 1));
        tree.insert(&path(&[("user", Some("b*"))]), limit("b-users", 2));
        tree.insert(&path(&[("user", None)]), limit("users", 3));
        tree.insert(
            &path(&[("client", Some("acme")), ("tier", Some("gold"))]),
            limit("gold", 4),
        );
        tree.insert(&path(&[("client", Some("acme"))]), limit("acme", 5));
        tree.insert(
            &path(&[("client", Some("acme")), ("tier", None)]),
            limit("acme-tier", 6),
        );
        tree
    }

    #[test]
    fn resolver_exact_beats_wildcard_beats_key_only() {
        let t = tree();
        assert_eq!(names(&t, &[("user", "vip")]), ["vip"]);
        assert_eq!(
            names(&t, &[("user", "bot-7")]),
            ["bots"],
            "first wildcard wins"
        );
        assert_eq!(names(&t, &[("user", "bob")]), ["b-users"]);
        assert_eq!(names(&t, &[("user", "alice")]), ["users"], "key-only");
        assert!(names(&t, &[("other", "x")]).is_empty());
    }

    #[test]
    fn resolver_nested_descriptors_and_depth_must_match() {
        let t = tree();
        assert_eq!(names(&t, &[("client", "acme"), ("tier", "gold")]), ["gold"]);
        assert_eq!(
            names(&t, &[("client", "acme"), ("tier", "silver")]),
            ["acme-tier"]
        );
        // A node with both a limit and children answers at either depth.
        assert_eq!(names(&t, &[("client", "acme")]), ["acme"]);
        // Longer than any rule, or leading nowhere: nothing.
        assert!(names(&t, &[("client", "acme"), ("tier", "gold"), ("x", "y")]).is_empty());
        assert!(names(&t, &[("client", "other"), ("tier", "gold")]).is_empty());
        assert!(t.matching(&[]).is_empty());
    }

    #[test]
    fn resolver_several_limits_on_one_node() {
        let mut t = Node::default();
        t.insert(&path(&[("user", None)]), limit("per-second", 0));
        t.insert(&path(&[("user", None)]), limit("per-day", 1));
        assert_eq!(names(&t, &[("user", "k")]), ["per-second", "per-day"]);
        assert_eq!(t.limits().count(), 2);
        assert!(t.has_key("user") && !t.has_key("ip"));
    }

    #[test]
    fn wildcards_match_like_envoys_ratelimit() {
        assert!(wildcard_match("foo*", "foo"));
        assert!(wildcard_match("foo*", "foobar"));
        assert!(wildcard_match("*bar", "foobar"));
        assert!(wildcard_match("foo*bar*baz", "foo1bar2baz"));
        assert!(wildcard_match("a*a", "aa"));
        assert!(!wildcard_match("a*a", "a"));
        assert!(!wildcard_match("foo*bar", "foobaz"));
        assert!(!wildcard_match("foo", "foobar"));
        assert!(wildcard_match("*", ""));
    }
}
