//! The graph walker that plan and apply share.
//!
//! Nodes run as soon as everything they depend on is done, with at most `parallelism`
//! running at once overall and at most a site's limit on one site. When a node fails, every
//! node that depends on it, directly or not, is skipped; every other node still runs. When
//! the walk is interrupted, running nodes finish and nothing new starts.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::task::JoinSet;

/// One node to visit.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its name in messages (an address).
    pub name: String,
    /// Its site, for the per-site limit.
    pub site: String,
    /// Indexes of the nodes that must be done first.
    pub dependencies: Vec<usize>,
}

/// How a node ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and succeeded.
    Done,
    /// It ran and failed.
    Failed,
    /// It did not run, because this node failed (or the walk was interrupted).
    Skipped {
        /// The failed node's name, or `interrupted`.
        because: String,
    },
}

/// Limits and the stop switch of a walk.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Nodes running at once, overall.
    pub parallelism: usize,
    /// Nodes running at once per site, where a site has a limit.
    pub per_site: HashMap<String, usize>,
    /// Set to stop starting nodes.
    pub interrupted: Arc<AtomicBool>,
}

impl Limits {
    /// `parallelism` overall, no per-site limit.
    pub fn new(parallelism: usize) -> Limits {
        Limits {
            parallelism: parallelism.max(1),
            per_site: HashMap::new(),
            interrupted: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Walks the nodes; `visit(i)` runs node `i` and says whether it succeeded.
pub async fn walk<F, Fut>(nodes: &[Node], limits: &Limits, visit: F) -> Vec<Outcome>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = bool> + Send + 'static,
{
    let n = nodes.len();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; n];
    let mut waiting: Vec<usize> = nodes.iter().map(|node| node.dependencies.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, node) in nodes.iter().enumerate() {
        for &d in &node.dependencies {
            dependents[d].push(i);
        }
    }
    let mut ready: VecDeque<usize> = (0..n).filter(|&i| waiting[i] == 0).collect();
    let mut running: JoinSet<(usize, bool)> = JoinSet::new();
    let mut per_site: HashMap<&str, usize> = HashMap::new();
    let mut task_ids: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut finished = 0;

    while finished < n {
        let stop = limits.interrupted.load(Ordering::SeqCst);
        // Start what may start.
        let mut deferred = VecDeque::new();
        while !stop && running.len() < limits.parallelism {
            let Some(i) = ready.pop_front() else { break };
            let site = nodes[i].site.as_str();
            let count = per_site.entry(site).or_default();
            if limits.per_site.get(site).is_some_and(|&limit| *count >= limit) {
                deferred.push_back(i);
                continue;
            }
            *count += 1;
            let task = visit(i);
            let handle = running.spawn(async move { (i, task.await) });
            task_ids.insert(handle.id(), i);
        }
        deferred.extend(ready.drain(..));
        ready = deferred;

        if stop && running.is_empty() {
            for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
                *outcome = Some(Outcome::Skipped { because: "interrupted".into() });
            }
            break;
        }
        let Some(joined) = running.join_next().await else {
            // Nothing runs and nothing is ready: only possible with a cycle, which the
            // graph rejects before a walk. Skip the rest rather than hang.
            for outcome in outcomes.iter_mut().filter(|o| o.is_none()) {
                *outcome = Some(Outcome::Skipped { because: "a dependency cycle".into() });
            }
            break;
        };
        let (i, ok) = match joined {
            Ok(result) => result,
            // A visit that panicked: that node failed.
            Err(e) => match task_ids.get(&e.id()) {
                Some(&i) => (i, false),
                None => continue,
            },
        };
        if let Some(count) = per_site.get_mut(nodes[i].site.as_str()) {
            *count = count.saturating_sub(1);
        }
        let mut stack = vec![(i, if ok { Outcome::Done } else { Outcome::Failed })];
        while let Some((j, outcome)) = stack.pop() {
            if outcomes[j].is_some() {
                continue;
            }
            finished += 1;
            let succeeded = outcome == Outcome::Done;
            let cause = match &outcome {
                Outcome::Skipped { because } => because.clone(),
                _ => nodes[j].name.clone(),
            };
            outcomes[j] = Some(outcome);
            for &d in &dependents[j] {
                if succeeded {
                    waiting[d] -= 1;
                    if waiting[d] == 0 && outcomes[d].is_none() {
                        ready.push_back(d);
                    }
                } else if outcomes[d].is_none() {
                    stack.push((d, Outcome::Skipped { because: cause.clone() }));
                }
            }
        }
    }
    outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Skipped { because: "interrupted".into() })).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn node(name: &str, site: &str, dependencies: Vec<usize>) -> Node {
        Node { name: name.into(), site: site.into(), dependencies }
    }

    #[tokio::test]
    async fn failure_skips_dependents_and_runs_independent_nodes() {
        // a → b → c, d independent; b fails.
        let nodes =
            vec![node("a", "s", vec![]), node("b", "s", vec![0]), node("c", "s", vec![1]), node("d", "s", vec![])];
        let order = Arc::new(Mutex::new(Vec::new()));
        let outcomes = walk(&nodes, &Limits::new(4), |i| {
            let order = order.clone();
            async move {
                order.lock().unwrap().push(i);
                i != 1
            }
        })
        .await;
        assert_eq!(outcomes[0], Outcome::Done);
        assert_eq!(outcomes[1], Outcome::Failed);
        assert_eq!(outcomes[2], Outcome::Skipped { because: "b".into() });
        assert_eq!(outcomes[3], Outcome::Done);
        let order = order.lock().unwrap();
        assert!(!order.contains(&2));
        let pos = |x| order.iter().position(|&i| i == x).unwrap();
        assert!(pos(0) < pos(1));
    }

    #[tokio::test]
    async fn respects_global_and_site_limits() {
        let nodes: Vec<Node> =
            (0..12).map(|i| node(&i.to_string(), if i % 2 == 0 { "a" } else { "b" }, vec![])).collect();
        let mut limits = Limits::new(4);
        limits.per_site.insert("a".into(), 1);
        let running = Arc::new(Mutex::new((0usize, 0usize, 0usize, 0usize))); // total, a, max total, max a
        let outcomes = walk(&nodes, &limits, |i| {
            let running = running.clone();
            async move {
                {
                    let mut r = running.lock().unwrap();
                    r.0 += 1;
                    if i % 2 == 0 {
                        r.1 += 1;
                    }
                    r.2 = r.2.max(r.0);
                    r.3 = r.3.max(r.1);
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                let mut r = running.lock().unwrap();
                r.0 -= 1;
                if i % 2 == 0 {
                    r.1 -= 1;
                }
                true
            }
        })
        .await;
        assert!(outcomes.iter().all(|o| *o == Outcome::Done));
        let r = running.lock().unwrap();
        assert!(r.2 <= 4, "max total {}", r.2);
        assert_eq!(r.3, 1, "site a ran more than one at once");
    }

    #[tokio::test]
    async fn interruption_skips_what_has_not_started() {
        let nodes = vec![node("a", "s", vec![]), node("b", "s", vec![0])];
        let limits = Limits::new(1);
        let flag = limits.interrupted.clone();
        let outcomes = walk(&nodes, &limits, |_| {
            let flag = flag.clone();
            async move {
                flag.store(true, Ordering::SeqCst);
                true
            }
        })
        .await;
        assert_eq!(outcomes[0], Outcome::Done);
        assert_eq!(outcomes[1], Outcome::Skipped { because: "interrupted".into() });
    }
}
