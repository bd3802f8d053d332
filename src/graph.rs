//! The dependency graph of resources: edges from `dependsOn`, from `ref()` and from
//! components' `dependsOn`. A cycle is an error naming every address in it.

use std::collections::{BTreeSet, HashMap};

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use strata_provider_sdk::{SpecRef, unknown};

use crate::diagnostics::{Diagnostic, Diagnostics, pointer_to_field};
use crate::provider::Registry;
use crate::render::Rendered;
use crate::stack::Stack;

/// Why one resource depends on another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EdgeKind {
    /// `dependsOn` of the resource.
    Explicit,
    /// A `ref()` in its spec.
    Reference,
    /// `dependsOn` of its component.
    Component,
    /// A `ref()` in the config of its site: the site is reached through that output.
    Site,
    /// Implied by its provider (a namespace before the objects in it).
    Implied,
}

/// Resources and who depends on whom. An edge `a → b` means `a` must exist before `b`.
#[derive(Debug, Clone)]
pub struct Graph {
    graph: DiGraph<String, EdgeKind>,
    index: HashMap<String, NodeIndex>,
}

impl Graph {
    /// Builds the graph of the rendered resources and checks it: every reference names a
    /// resource and an output it has, and there is no cycle.
    pub fn build(stack: &Stack, rendered: &Rendered, registry: &Registry) -> Result<Graph, Diagnostics> {
        let mut diags = Diagnostics::new();
        let mut graph = DiGraph::with_capacity(rendered.resources.len(), rendered.resources.len());
        let mut index = HashMap::with_capacity(rendered.resources.len());
        for address in rendered.resources.keys() {
            index.insert(address.clone(), graph.add_node(address.clone()));
        }
        let mut edges: BTreeSet<(NodeIndex, NodeIndex, EdgeKind)> = BTreeSet::new();
        for (address, resource) in &rendered.resources {
            let to = index[address];
            for (i, dep) in resource.depends_on.iter().enumerate() {
                match index.get(dep) {
                    Some(&from) => {
                        edges.insert((from, to, EdgeKind::Explicit));
                    }
                    None => diags.push(
                        Diagnostic::error(format!("`{address}` depends on `{dep}`, which the stack does not render"))
                            .at(resource.locate(&format!("/dependsOn/{i}")))
                            .field(format!("dependsOn[{i}]"))
                            .hint("`strata render` lists every address"),
                    ),
                }
            }
            references_with_pointers(&resource.spec, "/spec".into(), &mut |pointer, r| match index.get(r.address) {
                Some(&from) => {
                    let target = &rendered.resources[r.address];
                    if let Some(info) = registry.type_info(&target.resource_type)
                        && !info.outputs.iter().any(|o| o == r.field.split('.').next().unwrap_or(r.field))
                    {
                        diags.push(
                            Diagnostic::error(format!(
                                "`{address}` refers to output `{}` of `{}`, which it does not have",
                                r.field, r.address
                            ))
                            .at(resource.locate(&pointer))
                            .field(pointer_to_field(&pointer))
                            .hint(format!(
                                "`{}` outputs: {}",
                                target.resource_type,
                                info.outputs.join(", ")
                            )),
                        );
                    }
                    edges.insert((from, to, EdgeKind::Reference));
                }
                None => diags.push(
                    Diagnostic::error(format!(
                        "`{address}` refers to `{}`, which the stack does not render",
                        r.address
                    ))
                    .at(resource.locate(&pointer))
                    .field(pointer_to_field(&pointer))
                    .hint("`strata render` lists every address"),
                ),
            });
        }
        // Component dependencies: every resource of the component waits for every resource
        // of the components it depends on (on the same site when they are there too).
        let mut by_component: HashMap<(&str, &str), Vec<NodeIndex>> = HashMap::new();
        for instance in &rendered.instances {
            let top = instance.component.split('.').next().unwrap_or(&instance.component);
            let nodes = by_component.entry((instance.site.as_str(), top)).or_default();
            nodes.extend(instance.resources.iter().filter_map(|a| index.get(a).copied()));
        }
        for component in &stack.components {
            for dep in &component.depends_on {
                for site in stack.sites_of(component) {
                    let Some(targets) = by_component.get(&(site, component.name.as_str())) else {
                        continue;
                    };
                    let sources: Vec<NodeIndex> = match by_component.get(&(site, dep.as_str())) {
                        Some(same_site) => same_site.clone(),
                        None => by_component
                            .iter()
                            .filter(|((_, c), _)| *c == dep.as_str())
                            .flat_map(|(_, nodes)| nodes.iter().copied())
                            .collect(),
                    };
                    for &to in targets {
                        for &from in &sources {
                            edges.insert((from, to, EdgeKind::Component));
                        }
                    }
                }
            }
        }
        // A site reached through outputs of other resources: each of its resources waits
        // for them.
        for (site_name, site) in &stack.sites {
            let at = format!("/spec/sites/{site_name}/config");
            let mut targets = Vec::new();
            references_with_pointers(
                &site.config,
                at.clone(),
                &mut |pointer, r| match rendered.resources.get(r.address) {
                    Some(target) if target.site == *site_name => diags.push(
                        Diagnostic::error(format!(
                            "site `{site_name}` is reached through `{}`, which is on the same site",
                            r.address
                        ))
                        .at(stack.doc.locate(&pointer))
                        .field(pointer_to_field(&pointer))
                        .hint("a site's connection must come from a resource on another site"),
                    ),
                    Some(target) => {
                        if let Some(info) = registry.type_info(&target.resource_type)
                            && !info.outputs.iter().any(|o| o == r.field.split('.').next().unwrap_or(r.field))
                        {
                            diags.push(
                                Diagnostic::error(format!(
                                    "site `{site_name}` refers to output `{}` of `{}`, which it does not have",
                                    r.field, r.address
                                ))
                                .at(stack.doc.locate(&pointer))
                                .field(pointer_to_field(&pointer))
                                .hint(format!(
                                    "`{}` outputs: {}",
                                    target.resource_type,
                                    info.outputs.join(", ")
                                )),
                            );
                        }
                        targets.push(index[r.address]);
                    }
                    None => diags.push(
                        Diagnostic::error(format!(
                            "site `{site_name}` refers to `{}`, which the stack does not render",
                            r.address
                        ))
                        .at(stack.doc.locate(&pointer))
                        .field(pointer_to_field(&pointer))
                        .hint(
                            "write the full address, `site/component/type/name`; `strata render` lists every address",
                        ),
                    ),
                },
            );
            if targets.is_empty() {
                continue;
            }
            for resource in rendered.resources.values().filter(|r| r.site == *site_name) {
                for &from in &targets {
                    edges.insert((from, index[&resource.address], EdgeKind::Site));
                }
            }
        }
        // What providers imply among the resources of one site.
        let mut by_site: HashMap<(&str, &str), Vec<&crate::render::Resource>> = HashMap::new();
        for resource in rendered.resources.values() {
            if let Some(info) = registry.type_info(&resource.resource_type) {
                by_site.entry((resource.site.as_str(), info.provider.as_str())).or_default().push(resource);
            }
        }
        for ((_, provider), resources) in &by_site {
            let specs: Vec<SpecRef<'_>> =
                resources.iter().map(|r| SpecRef { resource_type: &r.resource_type, spec: &r.spec }).collect();
            for (dependent, dependency) in registry.implied_dependencies(provider, &specs) {
                let (to, from) = (index[&resources[dependent].address], index[&resources[dependency].address]);
                // An implied order never overrides one the stack states the other way round.
                if !edges.contains(&(to, from, EdgeKind::Explicit))
                    && !edges.contains(&(to, from, EdgeKind::Reference))
                    && !edges.contains(&(to, from, EdgeKind::Component))
                {
                    edges.insert((from, to, EdgeKind::Implied));
                }
            }
        }
        for (from, to, kind) in edges {
            graph.add_edge(from, to, kind);
        }
        let built = Graph { graph, index };
        diags.extend(built.cycles(rendered));
        diags.into_result(built)
    }

    /// An empty graph.
    pub fn empty() -> Graph {
        Graph { graph: DiGraph::new(), index: HashMap::new() }
    }

    /// Builds a graph from explicit edges (`(from, to)`: `from` first).
    pub fn from_edges<'a>(
        nodes: impl IntoIterator<Item = &'a str>,
        edges: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Graph {
        let mut g = Graph::empty();
        for n in nodes {
            let i = g.graph.add_node(n.to_string());
            g.index.insert(n.to_string(), i);
        }
        for (from, to) in edges {
            if let (Some(&a), Some(&b)) = (g.index.get(from), g.index.get(to)) {
                g.graph.update_edge(a, b, EdgeKind::Explicit);
            }
        }
        g
    }

    fn cycles(&self, rendered: &Rendered) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for scc in tarjan_scc(&self.graph) {
            let is_cycle = scc.len() > 1 || self.graph.contains_edge(scc[0], scc[0]);
            if !is_cycle {
                continue;
            }
            let mut names: Vec<&str> = scc.iter().map(|&n| self.graph[n].as_str()).collect();
            names.sort();
            let origin = |n: &str| rendered.resources.get(n).map(|r| r.origin.clone());
            let detail: Vec<String> = names
                .iter()
                .map(|n| match origin(n) {
                    Some(o) => format!("{n} ({}:{})", o.file, o.line),
                    None => n.to_string(),
                })
                .collect();
            let mut d = Diagnostic::error(format!("dependency cycle between {} resources", names.len()));
            if let Some(o) = origin(names[0]) {
                d = d.at(o);
            }
            out.push(
                d.detail(detail.join("\n"))
                    .hint("remove one `dependsOn` or `ref()` between them so that one can be made first"),
            );
        }
        out
    }

    /// The addresses `address` depends on directly.
    pub fn dependencies(&self, address: &str) -> Vec<&str> {
        let Some(&i) = self.index.get(address) else {
            return vec![];
        };
        let mut deps: Vec<&str> =
            self.graph.neighbors_directed(i, petgraph::Direction::Incoming).map(|n| self.graph[n].as_str()).collect();
        deps.sort_unstable();
        deps.dedup();
        deps
    }

    /// All addresses.
    pub fn addresses(&self) -> impl Iterator<Item = &str> {
        self.graph.node_weights().map(String::as_str)
    }

    /// The graph in Graphviz DOT, nodes grouped by site.
    pub fn to_dot(&self) -> String {
        let mut sites: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
        for address in self.addresses() {
            sites.entry(address.split('/').next().unwrap_or("")).or_default().push(address);
        }
        let mut out = String::from("digraph strata {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n");
        for (i, (site, addresses)) in sites.iter().enumerate() {
            out.push_str(&format!("  subgraph cluster_{i} {{\n    label={:?};\n", site));
            let mut addresses = addresses.clone();
            addresses.sort_unstable();
            for a in addresses {
                out.push_str(&format!("    {:?};\n", a));
            }
            out.push_str("  }\n");
        }
        let mut edges: Vec<(&str, &str, EdgeKind)> = self
            .graph
            .edge_indices()
            .filter_map(|e| {
                self.graph
                    .edge_endpoints(e)
                    .map(|(a, b)| (self.graph[a].as_str(), self.graph[b].as_str(), self.graph[e]))
            })
            .collect();
        edges.sort();
        for (from, to, kind) in edges {
            let style = match kind {
                EdgeKind::Explicit => "",
                EdgeKind::Reference => " [style=dashed]",
                EdgeKind::Component => " [color=gray]",
                EdgeKind::Site => " [color=blue]",
                EdgeKind::Implied => " [style=dotted]",
            };
            out.push_str(&format!("  {:?} -> {:?}{style};\n", from, to));
        }
        out.push_str("}\n");
        out
    }
}

/// Calls `visit` with the JSON pointer of every string holding a reference, and the reference.
fn references_with_pointers<'a>(
    value: &'a serde_json::Value,
    pointer: String,
    visit: &mut dyn FnMut(String, unknown::Reference<'a>),
) {
    match value {
        serde_json::Value::String(s) => {
            for r in unknown::references(s) {
                visit(pointer.clone(), r);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                references_with_pointers(v, format!("{pointer}/{i}"), visit);
            }
        }
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                references_with_pointers(v, format!("{pointer}/{}", k.replace('~', "~0").replace('/', "~1")), visit);
            }
        }
        _ => {}
    }
}
