//! The `aws` provider: VPCs, subnets, internet gateways, route tables, security groups,
//! key pairs, instances (GPU types validated), EBS volumes and their attachments, on the
//! official AWS SDK for Rust.
//!
//! Ownership and crash safety: every object is created with the tags `strata:stack` and
//! `strata:address` in the same call that creates it (`TagSpecifications`), so an object
//! that exists is findable by its address even when the process died before recording it;
//! the next plan adopts it instead of creating a twin. `RunInstances` and `CreateVolume`
//! also carry a client token derived from the address and the spec.
//!
//! Fast refresh: reads of one type on one site share one `Describe*` call filtered by the
//! stack's tag, cached until something of that type is written.
#![deny(missing_docs)]

mod objects;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use aws_sdk_ec2::Client;
use serde::Deserialize;
use serde_json::Value;
use strata_provider_sdk::*;
use tokio::sync::Mutex;

/// The `aws` provider for one site (a region).
#[derive(Default)]
pub struct AwsProvider {
    site: OnceLock<Site>,
}

const _: () = assert_provider::<AwsProvider>();

/// Makes an [`AwsProvider`]; a [`ProviderFactory`].
pub fn factory() -> Box<dyn Provider> {
    Box::new(AwsProvider::default())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SiteConfig {
    region: String,
    #[serde(default)]
    profile: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    default_tags: HashMap<String, String>,
}

/// A configured region.
pub(crate) struct Site {
    pub(crate) client: Client,
    pub(crate) stack: String,
    pub(crate) region: String,
    pub(crate) default_tags: HashMap<String, String>,
    /// One `Describe*` result per type, until a write of that type.
    pub(crate) cache: Mutex<HashMap<&'static str, Arc<Vec<objects::Live>>>>,
    /// Instance types already checked, with their GPU info (or why they are refused).
    pub(crate) instance_types: Mutex<HashMap<String, Result<Value, String>>>,
    /// API calls made (logged when the provider is dropped, at the end of a run).
    pub(crate) calls: Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for Site {
    fn drop(&mut self) {
        let calls = self.calls.load(std::sync::atomic::Ordering::Relaxed);
        tracing::info!(region = %self.region, calls, "aws API calls made");
        if std::env::var_os("STRATA_AWS_CALLS").is_some() {
            eprintln!("aws: {calls} API calls ({})", self.region);
        }
    }
}

/// Counts the EC2 API calls a site makes (one per call, retries not counted).
#[derive(Debug)]
struct CallCounter {
    calls: Arc<std::sync::atomic::AtomicU64>,
}

impl aws_sdk_ec2::config::Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "strata-call-counter"
    }

    fn read_before_execution(
        &self,
        _context: &aws_sdk_ec2::config::interceptors::BeforeSerializationInterceptorContextRef<'_>,
        _config: &mut aws_sdk_ec2::config::ConfigBag,
    ) -> Result<(), aws_sdk_ec2::error::BoxError> {
        self.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// The resource types: name, description, outputs.
pub(crate) const TYPES: &[(&str, &str, &[&str])] = &[
    ("aws.vpc", "A VPC", &["id", "cidrBlock"]),
    ("aws.subnet", "A subnet of a VPC", &["id", "availabilityZone", "cidrBlock"]),
    ("aws.internet_gateway", "An internet gateway attached to a VPC", &["id"]),
    ("aws.route_table", "A route table with its routes and subnet associations", &["id"]),
    ("aws.security_group", "A security group with its ingress rules", &["id"]),
    ("aws.key_pair", "An imported SSH public key", &["id", "keyName", "fingerprint"]),
    (
        "aws.instance",
        "An EC2 instance (GPU types are validated against the region)",
        &["id", "privateIp", "availabilityZone", "gpus"],
    ),
    ("aws.volume", "An EBS volume", &["id", "availabilityZone"]),
    ("aws.volume_attachment", "An EBS volume attached to an instance", &["id"]),
];

fn schema_of(name: &str) -> Value {
    let text = match name {
        "aws.vpc" => include_str!("../../../schemas/resources/aws.vpc.json"),
        "aws.subnet" => include_str!("../../../schemas/resources/aws.subnet.json"),
        "aws.internet_gateway" => include_str!("../../../schemas/resources/aws.internet_gateway.json"),
        "aws.route_table" => include_str!("../../../schemas/resources/aws.route_table.json"),
        "aws.security_group" => include_str!("../../../schemas/resources/aws.security_group.json"),
        "aws.key_pair" => include_str!("../../../schemas/resources/aws.key_pair.json"),
        "aws.instance" => include_str!("../../../schemas/resources/aws.instance.json"),
        "aws.volume" => include_str!("../../../schemas/resources/aws.volume.json"),
        "aws.volume_attachment" => include_str!("../../../schemas/resources/aws.volume_attachment.json"),
        _ => "true",
    };
    serde_json::from_str(text).unwrap_or(Value::Bool(true))
}

/// GPU instance types by model and count, for blueprints (`providers.aws.gpuInstanceTypes`):
/// a static table of well-known types; what a region really offers is checked at plan
/// against `DescribeInstanceTypes`.
pub fn gpu_instance_types() -> Value {
    const TABLE: &[(&str, &str, u32, u32)] = &[
        // instance type, GPU model, GPUs, memory per GPU (GiB)
        ("g4dn.xlarge", "T4", 1, 16),
        ("g4dn.12xlarge", "T4", 4, 16),
        ("g5.xlarge", "A10G", 1, 24),
        ("g5.12xlarge", "A10G", 4, 24),
        ("g5.48xlarge", "A10G", 8, 24),
        ("g6.xlarge", "L4", 1, 24),
        ("g6.12xlarge", "L4", 4, 24),
        ("g6.48xlarge", "L4", 8, 24),
        ("p3.2xlarge", "V100", 1, 16),
        ("p3.8xlarge", "V100", 4, 16),
        ("p3.16xlarge", "V100", 8, 16),
        ("p4d.24xlarge", "A100", 8, 40),
        ("p4de.24xlarge", "A100", 8, 80),
        ("p5.48xlarge", "H100", 8, 80),
        ("p5e.48xlarge", "H200", 8, 141),
    ];
    Value::Array(
        TABLE
            .iter()
            .map(|(t, model, count, memory)| {
                serde_json::json!({"instanceType": t, "gpuModel": model, "gpuCount": count, "gpuMemoryGib": memory})
            })
            .collect(),
    )
}

impl AwsProvider {
    fn site(&self) -> Result<&Site, Diagnostic> {
        self.site.get().ok_or_else(|| Diagnostic::error("the aws provider was not configured"))
    }
}

#[async_trait]
impl Provider for AwsProvider {
    fn schema(&self) -> ProviderSchema {
        ProviderSchema {
            name: "aws".into(),
            config: serde_json::from_str(include_str!("../../../schemas/providers/aws.config.json"))
                .unwrap_or(Value::Bool(true)),
            resource_types: TYPES
                .iter()
                .map(|(name, description, outputs)| ResourceTypeSchema {
                    name: name.to_string(),
                    description: description.to_string(),
                    spec: schema_of(name),
                    outputs: outputs.iter().map(|o| o.to_string()).collect(),
                })
                .collect(),
            data: serde_json::json!({"gpuInstanceTypes": gpu_instance_types()}),
        }
    }

    async fn configure(&self, request: ConfigureRequest) -> ConfigureResponse {
        let config: SiteConfig = match serde_json::from_value(request.config.clone()) {
            Ok(c) => c,
            Err(e) => {
                return ConfigureResponse {
                    diagnostics: vec![Diagnostic::error(format!("invalid aws site config: {e}"))],
                    max_concurrency: None,
                };
            }
        };
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()));
        if let Some(profile) = &config.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        let shared = loader.load().await;
        let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ec2_config =
            aws_sdk_ec2::config::Builder::from(&shared).interceptor(CallCounter { calls: calls.clone() }).build();
        let client = Client::from_conf(ec2_config);
        let _ = self.site.set(Site {
            client,
            stack: request.stack.clone(),
            region: config.region,
            default_tags: config.default_tags,
            cache: Mutex::new(HashMap::new()),
            instance_types: Mutex::new(HashMap::new()),
            calls,
        });
        ConfigureResponse { diagnostics: vec![], max_concurrency: Some(20) }
    }

    async fn read(&self, request: ReadRequest) -> ReadResponse {
        let site = match self.site() {
            Ok(s) => s,
            Err(d) => return ReadResponse { diagnostics: vec![d], state: None },
        };
        match objects::read(site, &request).await {
            Ok(state) => ReadResponse { diagnostics: vec![], state },
            Err(d) => ReadResponse { diagnostics: vec![d], state: None },
        }
    }

    async fn plan(&self, request: PlanRequest) -> PlanResponse {
        let site = match self.site() {
            Ok(s) => s,
            Err(d) => return PlanResponse::failed(vec![d]),
        };
        objects::plan(site, &request).await
    }

    async fn apply(&self, request: ApplyRequest) -> ApplyResponse {
        let site = match self.site() {
            Ok(s) => s,
            Err(d) => return ApplyResponse { diagnostics: vec![d], state: None },
        };
        let result = objects::apply(site, &request).await;
        site.cache.lock().await.clear();
        match result {
            Ok(state) => ApplyResponse { diagnostics: vec![], state: Some(state) },
            Err(d) => ApplyResponse { diagnostics: vec![d], state: None },
        }
    }

    async fn delete(&self, request: DeleteRequest) -> DeleteResponse {
        let site = match self.site() {
            Ok(s) => s,
            Err(d) => return DeleteResponse { diagnostics: vec![d] },
        };
        let result = objects::delete(site, &request).await;
        site.cache.lock().await.clear();
        match result {
            Ok(()) => DeleteResponse::default(),
            Err(d) => DeleteResponse { diagnostics: vec![d] },
        }
    }

    async fn import(&self, request: ImportRequest) -> ImportResponse {
        let site = match self.site() {
            Ok(s) => s,
            Err(d) => return ImportResponse { diagnostics: vec![d], state: None },
        };
        match objects::import(site, &request).await {
            Ok(Some(state)) => ImportResponse { diagnostics: vec![], state: Some(state) },
            Ok(None) => ImportResponse {
                diagnostics: vec![Diagnostic::error(format!(
                    "no {} with id `{}` in {}",
                    request.resource.resource_type, request.id, site.region
                ))],
                state: None,
            },
            Err(d) => ImportResponse { diagnostics: vec![d], state: None },
        }
    }
}
