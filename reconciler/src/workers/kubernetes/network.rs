//! The NetworkPolicy of one worker pod: no ingress at all; egress only to
//! DNS (the cluster's `kube-dns` pods), the git server the worker clones
//! from and pushes to, and what the agent declared (`RunSpec.network`).
//!
//! A NetworkPolicy speaks in addresses, not names, so a declared hostname
//! (`api.anthropic.com:443`) opens its port to the public internet: every
//! address except the private, shared, loopback and link-local ranges
//! (which hold the cluster, the node and the cloud's metadata endpoint).
//! Exact enforcement by name needs an egress proxy or a CNI with FQDN
//! policies (Cilium's `toFQDNs`); docs/kubernetes-security.md says more.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{JobTemplate, WORKER_LABEL, labels};
use crate::workers::spec::{RunSpec, WorkerNetwork};

/// IPv4 ranges a hostname entry never opens: this network, private
/// (RFC 1918), shared address space (RFC 6598, some clusters' pods),
/// loopback and link-local (the cloud's metadata endpoint 169.254.169.254).
pub const NON_PUBLIC_V4: &[&str] =
    &["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16"];
/// IPv6 ranges a hostname entry never opens: loopback, IPv4-mapped, unique
/// local (RFC 4193) and link-local.
pub const NON_PUBLIC_V6: &[&str] = &["::1/128", "::ffff:0:0/96", "fc00::/7", "fe80::/10"];

/// Namespace label every namespace carries (Kubernetes 1.22+).
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where the worker reaches its git server, as the operator names it
/// (`--worker-git-egress`): an address range or one address, or every pod
/// of an in-cluster namespace; always with a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitEgress {
    /// Who.
    pub peer: GitPeer,
    /// TCP port.
    pub port: u16,
}

/// The git server's side of a [`GitEgress`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitPeer {
    /// An IPv4 range (`10.20.0.0/16`; one address is `/32`).
    Cidr(String),
    /// Every pod of this namespace (by its `kubernetes.io/metadata.name`
    /// label): an in-cluster Gitea reached through its Service.
    Namespace(String),
}

/// A git egress rule that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GitEgressError {
    /// No `:port` at the end.
    #[error(
        "git egress `{0}`: expected `CIDR:PORT`, `ADDRESS:PORT` or `namespace/NAME:PORT`, e.g. `10.0.0.0/16:3000` or `namespace/gitea:3000`"
    )]
    Shape(String),
    /// A port that is not 1-65535.
    #[error("git egress `{entry}`: `{port}` is not a port (1-65535)")]
    Port {
        /// The entry.
        entry: String,
        /// Its port part.
        port: String,
    },
    /// Neither an IPv4 address or range nor `namespace/NAME`.
    #[error(
        "git egress `{0}`: the part before the port must be an IPv4 address, an IPv4 CIDR or `namespace/NAME` (a hostname cannot be written in a NetworkPolicy)"
    )]
    Peer(String),
}

impl FromStr for GitEgress {
    type Err = GitEgressError;

    fn from_str(entry: &str) -> Result<Self, Self::Err> {
        let (who, port) = entry.trim().rsplit_once(':').ok_or_else(|| GitEgressError::Shape(entry.to_owned()))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| GitEgressError::Port { entry: entry.to_owned(), port: port.to_owned() })?;
        let peer = if let Some(ns) = who.strip_prefix("namespace/") {
            if !crate::ids::is_dns_label(ns) {
                return Err(GitEgressError::Peer(entry.to_owned()));
            }
            GitPeer::Namespace(ns.to_owned())
        } else {
            GitPeer::Cidr(ipv4_cidr(who).ok_or_else(|| GitEgressError::Peer(entry.to_owned()))?)
        };
        Ok(GitEgress { peer, port })
    }
}

/// `a.b.c.d` as `a.b.c.d/32`, `a.b.c.d/n` with its host bits cleared
/// (the canonical form the API server wants); `None` for anything else.
pub fn ipv4_cidr(text: &str) -> Option<String> {
    let (addr, bits) = match text.split_once('/') {
        Some((addr, bits)) => (addr, bits.parse::<u32>().ok().filter(|b| *b <= 32)?),
        None => (text, 32),
    };
    let addr: Ipv4Addr = addr.parse().ok()?;
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    Some(format!("{}/{bits}", Ipv4Addr::from(u32::from(addr) & mask)))
}

/// The host and port of a clone URL (`https://host[:port]/…`,
/// `ssh://[user@]host[:port]/…`, `git://…`, scp-like `user@host:path`);
/// `None` for a local path or `file://`.
pub fn clone_endpoint(url: &str) -> Option<(String, u16)> {
    if let Some((scheme, rest)) = url.split_once("://") {
        let default_port = match scheme {
            "https" => 443,
            "http" => 80,
            "ssh" | "git+ssh" => 22,
            "git" => 9418,
            _ => return None,
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':'))
        } else {
            match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            }
        };
        let port = match port {
            Some(p) => p.parse().ok()?,
            None => default_port,
        };
        return (!host.is_empty()).then(|| (host.to_owned(), port));
    }
    // scp-like `git@host:owner/repo.git`: a colon before any slash.
    let (before, _) = url.split_once(':')?;
    if before.contains('/') || before.is_empty() {
        return None;
    }
    let host = before.rsplit_once('@').map_or(before, |(_, h)| h);
    (!host.is_empty()).then(|| (host.to_owned(), 22))
}

fn ip_block(cidr: &str, except: &[&str]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_owned(),
            except: (!except.is_empty()).then(|| except.iter().map(|s| (*s).to_owned()).collect()),
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn selector(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: Some(pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
        ..LabelSelector::default()
    }
}

/// The public internet: every address but the non-public ranges.
fn public() -> Vec<NetworkPolicyPeer> {
    vec![ip_block("0.0.0.0/0", NON_PUBLIC_V4), ip_block("::/0", NON_PUBLIC_V6)]
}

/// Who a `host` of a `host:port` pair is: its range, its one address, or
/// (a name) the public internet.
fn peers_for_host(host: &str) -> Vec<NetworkPolicyPeer> {
    if let Some(cidr) = ipv4_cidr(host) {
        return vec![ip_block(&cidr, &[])];
    }
    match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => vec![ip_block(&format!("{v6}/128"), &[])],
        _ => public(),
    }
}

fn tcp(port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort { port: Some(IntOrString::Int(i32::from(port))), protocol: Some("TCP".to_owned()), end_port: None }
}

fn rule(to: Vec<NetworkPolicyPeer>, ports: Vec<NetworkPolicyPort>) -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule { to: Some(to), ports: (!ports.is_empty()).then_some(ports) }
}

/// The namespace of an in-cluster Service name (`gitea-http.gitea.svc`,
/// `gitea-http.gitea.svc.cluster.local`).
fn service_namespace(host: &str) -> Option<&str> {
    let rest = host.strip_suffix(".svc").or_else(|| host.strip_suffix(".svc.cluster.local"))?;
    let (service, namespace) = rest.split_once('.')?;
    (crate::ids::is_dns_label(service) && crate::ids::is_dns_label(namespace)).then_some(namespace)
}

/// The egress rules that let the worker reach its git server: the ones the
/// operator named, else the clone URL's host and port (a local path:
/// none; an in-cluster Service name: its namespace's pods on that port).
fn git_rules(spec: &RunSpec, tpl: &JobTemplate) -> Vec<NetworkPolicyEgressRule> {
    if !tpl.git_egress.is_empty() {
        return tpl
            .git_egress
            .iter()
            .map(|g| {
                let peer = match &g.peer {
                    GitPeer::Cidr(cidr) => ip_block(cidr, &[]),
                    GitPeer::Namespace(ns) => NetworkPolicyPeer {
                        namespace_selector: Some(selector(&[(NAMESPACE_NAME_LABEL, ns)])),
                        ..NetworkPolicyPeer::default()
                    },
                };
                rule(vec![peer], vec![tcp(g.port)])
            })
            .collect();
    }
    clone_endpoint(&spec.clone_url)
        .map(|(host, port)| {
            let peers = match service_namespace(&host) {
                Some(ns) => vec![NetworkPolicyPeer {
                    namespace_selector: Some(selector(&[(NAMESPACE_NAME_LABEL, ns)])),
                    ..NetworkPolicyPeer::default()
                }],
                None => peers_for_host(&host),
            };
            rule(peers, vec![tcp(port)])
        })
        .into_iter()
        .collect()
}

/// The NetworkPolicy of one worker's pod, named after the worker and, once
/// its Job exists, owned by it (Kubernetes deletes it with the Job).
pub fn network_policy(spec: &RunSpec, tpl: &JobTemplate) -> NetworkPolicy {
    let dns_ports = vec![NetworkPolicyPort { port: Some(IntOrString::Int(53)), protocol: Some("UDP".to_owned()), end_port: None }, tcp(53)];
    let dns = NetworkPolicyPeer {
        namespace_selector: Some(selector(&[(NAMESPACE_NAME_LABEL, "kube-system")])),
        pod_selector: Some(selector(&[("k8s-app", "kube-dns")])),
        ..NetworkPolicyPeer::default()
    };
    let mut egress = vec![rule(vec![dns], dns_ports)];
    egress.extend(git_rules(spec, tpl));
    match &spec.network {
        WorkerNetwork::None => {}
        WorkerNetwork::Allow(_) => {
            for (host, port) in spec.network.endpoints() {
                let r = rule(peers_for_host(host), vec![tcp(port)]);
                if !egress.contains(&r) {
                    egress.push(r);
                }
            }
        }
        // The pod network's whole reach, the cluster included, on every
        // port; never the link-local ranges, where a cloud's metadata
        // endpoint hands out the node's credentials.
        WorkerNetwork::Host => {
            egress.push(rule(vec![ip_block("0.0.0.0/0", &["169.254.0.0/16"]), ip_block("::/0", &["fe80::/10"])], vec![]))
        }
    }
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(spec.worker.clone()),
            namespace: Some(tpl.namespace.clone()),
            labels: Some(labels(spec)),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(WORKER_LABEL.to_owned(), spec.worker.clone())])),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            // No rule: nothing may connect to the worker.
            ingress: Some(vec![]),
            egress: Some(egress),
        }),
    }
}
