//! The `aws` provider against a real AWS API emulator: moto's server mode on loopback,
//! started by `e2e/aws/moto` for each test on its own port. A test that cannot start it
//! fails, naming the command; it never skips. The SDK gets fake credentials and may not
//! reach the instance-metadata address (`AWS_EC2_METADATA_DISABLED=true`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const MOTO: &str = "e2e/aws/moto";

struct Moto {
    port: u16,
    home: tempfile::TempDir,
}

impl Moto {
    fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let out = Command::new(MOTO).args(["start", &port.to_string()]).output().unwrap_or_else(|e| {
            panic!("cannot run `{MOTO} start {port}`: {e}; the aws tests need the emulator (`{MOTO} prepare`)")
        });
        assert!(
            out.status.success(),
            "`{MOTO} start {port}` failed: the aws tests need the emulator; run `{MOTO} prepare`\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Moto { port, home: tempfile::tempdir().unwrap() }
    }

    /// Environment for anything that talks to the emulator: fake credentials, no
    /// instance metadata, no configuration of the machine's user.
    fn env(&self, command: &mut Command) {
        command
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", self.home.path().join("config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.home.path().join("credentials"))
            .env("HOME", self.home.path())
            .env("NO_COLOR", "1");
    }

    /// Runs a boto3 snippet against the emulator (`ec2` is the client); returns its
    /// stdout parsed as JSON.
    fn boto(&self, code: &str) -> Value {
        let cache = std::env::var("STRATA_CACHE").unwrap_or_else(|_| "/var/cache/strata".into());
        let python = format!("{cache}/venv-moto/bin/python");
        let script = format!(
            "import boto3, json\nec2 = boto3.client('ec2', endpoint_url='http://127.0.0.1:{}')\n{code}",
            self.port
        );
        let mut command = Command::new(&python);
        command.args(["-c", &script]);
        self.env(&mut command);
        let out = command.output().unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
        assert!(out.status.success(), "boto3 failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// Addresses of every object tagged with the stack, by kind.
    fn tagged(&self, stack: &str) -> Vec<String> {
        let v = self.boto(&format!(
            r#"f = [{{'Name': 'tag:strata:stack', 'Values': ['{stack}']}}]
def addr(tags): return [t['Value'] for t in tags or [] if t['Key'] == 'strata:address']
out = []
for v in ec2.describe_vpcs(Filters=f)['Vpcs']: out += addr(v.get('Tags'))
for s in ec2.describe_subnets(Filters=f)['Subnets']: out += addr(s.get('Tags'))
for g in ec2.describe_security_groups(Filters=f)['SecurityGroups']: out += addr(g.get('Tags'))
for g in ec2.describe_internet_gateways(Filters=f)['InternetGateways']: out += addr(g.get('Tags'))
for t in ec2.describe_route_tables(Filters=f)['RouteTables']: out += addr(t.get('Tags'))
for k in ec2.describe_key_pairs(Filters=f)['KeyPairs']: out += addr(k.get('Tags'))
for v in ec2.describe_volumes(Filters=f)['Volumes']: out += addr(v.get('Tags'))
live = f + [{{'Name': 'instance-state-name', 'Values': ['pending', 'running', 'stopping', 'stopped']}}]
for r in ec2.describe_instances(Filters=live)['Reservations']:
    for i in r['Instances']: out += addr(i.get('Tags'))
print(json.dumps(sorted(out)))"#
        ));
        v.as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect()
    }

    fn stack(&self, dir: &Path, instance_type: &str, count: usize) -> PathBuf {
        let text = std::fs::read_to_string("examples/aws-gpu/stack.yaml")
            .unwrap()
            .replace("http://127.0.0.1:5055", &format!("http://127.0.0.1:{}", self.port))
            .replace(
                "catalog: [../../blueprints]",
                &format!("catalog: [{}]", std::fs::canonicalize("blueprints").unwrap().display()),
            )
            .replace("instanceType: p4d.24xlarge", &format!("instanceType: {instance_type}"))
            .replace("count: 2", &format!("count: {count}"));
        let path = dir.join("stack.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    fn strata(&self, stack: &Path, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
        command.arg("--stack").arg(stack).args(args).stdin(Stdio::null());
        self.env(&mut command);
        command.output().unwrap()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = Command::new(MOTO).args(["stop", &self.port.to_string()]).output();
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn gpu_nodes_converge_show_drift_replace_on_type_change_and_destroy_everything() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let stack = moto.stack(dir.path(), "p4d.24xlarge", 2);
    let applied = moto.strata(&stack, &["apply", "--auto-approve"]);
    assert!(applied.status.success(), "{}", text(&applied));
    let tagged = moto.tagged("aws-gpu");
    let expected: Vec<&str> = vec![
        "us-east/training/aws.instance/gpu-0",
        "us-east/training/aws.instance/gpu-1",
        "us-east/training/aws.internet_gateway/main",
        "us-east/training/aws.key_pair/admin",
        "us-east/training/aws.route_table/public",
        "us-east/training/aws.security_group/nodes",
        "us-east/training/aws.subnet/nodes",
        "us-east/training/aws.volume/gpu-0-data",
        "us-east/training/aws.volume/gpu-1-data",
        "us-east/training/aws.vpc/main",
    ];
    assert_eq!(tagged, expected, "every object carries its stack and address tags");
    let team = moto.boto("print(json.dumps([t['Value'] for v in ec2.describe_vpcs(Filters=[{'Name': 'tag:strata:stack', 'Values': ['aws-gpu']}])['Vpcs'] for t in v['Tags'] if t['Key'] == 'team']))");
    assert_eq!(team, serde_json::json!(["ml-platform"]), "default tags are applied");
    let attached = moto.boto("print(json.dumps(sorted(a['Device'] for v in ec2.describe_volumes(Filters=[{'Name': 'tag:strata:stack', 'Values': ['aws-gpu']}])['Volumes'] for a in v['Attachments'])))");
    assert_eq!(attached, serde_json::json!(["/dev/sdf", "/dev/sdf"]));

    let again = moto.strata(&stack, &["plan", "--detailed-exitcode"]);
    assert_eq!(again.status.code(), Some(0), "the second plan must be empty:\n{}", text(&again));

    // A rule removed behind strata's back shows in the next plan, and only that.
    moto.boto(
        "g = [g for g in ec2.describe_security_groups()['SecurityGroups'] if g['GroupName'] == 'training-nodes'][0]\n\
         ec2.revoke_security_group_ingress(GroupId=g['GroupId'], IpPermissions=[{'IpProtocol': 'tcp', 'FromPort': 22, 'ToPort': 22, 'IpRanges': [{'CidrIp': '10.0.0.0/8'}]}])\nprint('null')",
    );
    let drift = moto.strata(&stack, &["plan", "--json"]);
    let plan: Value = serde_json::from_slice(&drift.stdout).unwrap_or_else(|_| panic!("{}", text(&drift)));
    let changed: Vec<(&str, &str)> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] != "no-op")
        .map(|c| (c["address"].as_str().unwrap(), c["action"].as_str().unwrap()))
        .collect();
    assert_eq!(changed, vec![("us-east/training/aws.security_group/nodes", "update")]);
    assert!(moto.strata(&stack, &["apply", "--auto-approve"]).status.success());

    // A gateway detached behind strata's back is attached again, in place.
    moto.boto(
        "g = ec2.describe_internet_gateways(Filters=[{'Name': 'tag:strata:stack', 'Values': ['aws-gpu']}])['InternetGateways'][0]\n\
         ec2.detach_internet_gateway(InternetGatewayId=g['InternetGatewayId'], VpcId=g['Attachments'][0]['VpcId'])\nprint('null')",
    );
    let plan = moto.strata(&stack, &["plan"]);
    assert!(text(&plan).contains("aws.internet_gateway/main will be updated in place"), "{}", text(&plan));
    assert!(moto.strata(&stack, &["apply", "--auto-approve"]).status.success());
    let attached = moto.boto("print(json.dumps(len(ec2.describe_internet_gateways(Filters=[{'Name': 'tag:strata:stack', 'Values': ['aws-gpu']}])['InternetGateways'][0]['Attachments'])))");
    assert_eq!(attached, serde_json::json!(1));
    // The GPU info of the instances stays in the state across refreshes.
    let state: Value = serde_json::from_slice(&std::fs::read(dir.path().join(".strata/state.json")).unwrap()).unwrap();
    assert_eq!(state["resources"]["us-east/training/aws.instance/gpu-0"]["outputs"]["gpus"]["count"], 8, "{state}");

    // An instance type change replaces, and says why; an unknown type is refused at plan.
    let bigger = moto.stack(dir.path(), "p5.48xlarge", 2);
    let plan = moto.strata(&bigger, &["plan"]);
    let out = text(&plan);
    assert!(out.contains("us-east/training/aws.instance/gpu-0 must be replaced"), "{out}");
    assert!(out.contains("`instanceType` cannot change in place (now \"p4d.24xlarge\")"), "{out}");
    let bogus = moto.stack(dir.path(), "p9.bogus", 2);
    let refused = moto.strata(&bogus, &["plan"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused).contains("instance type `p9.bogus` is not offered in us-east-1"), "{}", text(&refused));
    assert!(text(&refused).contains("field: spec.instanceType"), "{}", text(&refused));

    let stack = moto.stack(dir.path(), "p4d.24xlarge", 2);
    let destroyed = moto.strata(&stack, &["destroy", "--auto-approve"]);
    assert!(destroyed.status.success(), "{}", text(&destroyed));
    assert_eq!(moto.tagged("aws-gpu"), Vec::<String>::new(), "nothing tagged with the stack is left");
}

#[test]
fn killed_applies_leave_exactly_one_object_per_address() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let stack = moto.stack(dir.path(), "p4d.24xlarge", 4);
    // SIGKILL at several points of the creation, then let a run finish.
    let mut seen = Vec::new();
    for delay_ms in [150u64, 250, 350, 500, 700] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_strata"));
        command.arg("--stack").arg(&stack).args(["apply", "--auto-approve", "--parallelism", "2"]);
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        moto.env(&mut command);
        let mut child = command.spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        seen.push(moto.tagged("aws-gpu").len());
        // The lock of the killed run is stale: its holder is gone.
        let lock = dir.path().join(".strata/state.json.lock");
        if lock.exists() {
            let held: Value = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
            let unlocked = moto.strata(&stack, &["force-unlock", held["id"].as_str().unwrap()]);
            assert!(unlocked.status.success(), "{}", text(&unlocked));
        }
    }
    // At least one kill landed in the middle of the creation (14 objects carry tags).
    assert!(seen.iter().any(|n| *n > 0 && *n < 14), "no kill interrupted the creation: {seen:?}");
    let finished = moto.strata(&stack, &["apply", "--auto-approve"]);
    assert!(finished.status.success(), "{}", text(&finished));
    let tagged = moto.tagged("aws-gpu");
    let mut unique = tagged.clone();
    unique.dedup();
    assert_eq!(tagged, unique, "an address has two objects: {tagged:?}");
    assert_eq!(tagged.iter().filter(|a| a.contains("aws.instance/")).count(), 4, "{tagged:?}");
    let again = moto.strata(&stack, &["plan", "--detailed-exitcode"]);
    assert_eq!(again.status.code(), Some(0), "the state converged:\n{}", text(&again));
    let state: Value = serde_json::from_slice(&std::fs::read(dir.path().join(".strata/state.json")).unwrap()).unwrap();
    assert_eq!(state["resources"].as_object().unwrap().len(), 18, "{state}");
}

#[test]
fn bad_input_is_refused_naming_site_and_field_and_records_nothing() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let stack = moto.stack(dir.path(), "p4d.24xlarge", 1);
    let original = std::fs::read_to_string(&stack).unwrap();

    // Missing region: the site's config is checked before anything runs.
    std::fs::write(&stack, original.replace("config: {region: us-east-1, ", "config: {")).unwrap();
    let out = moto.strata(&stack, &["plan"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("missing required field `region`"), "{}", text(&out));
    assert!(text(&out).contains("field: spec.sites.us-east.config.region"), "{}", text(&out));

    // A bad CIDR: refused by the blueprint's inputs, at its line in the stack.
    std::fs::write(&stack, original.replace("dataVolumeSize: 500", "dataVolumeSize: 500\n        cidr: 10.0.0.0/33"))
        .unwrap();
    let out = moto.strata(&stack, &["plan"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("\"10.0.0.0/33\" does not match"), "{}", text(&out));
    assert!(text(&out).contains("field: spec.components[0].values.cidr"), "{}", text(&out));
    assert!(text(&out).contains("stack.yaml:26:15"), "{}", text(&out));
    // Written straight into a resource, the provider refuses it at plan, naming the field.
    let raw = dir.path().join("raw");
    std::fs::create_dir_all(raw.join("catalog/raw/templates")).unwrap();
    std::fs::write(
        raw.join("catalog/raw/blueprint.yaml"),
        "apiVersion: strata.dev/v1alpha1\nkind: Blueprint\nmetadata: {name: raw, version: 1.0.0}\nspec: {}\n",
    )
    .unwrap();
    std::fs::write(
        raw.join("catalog/raw/templates/vpc.yaml.j2"),
        "type: aws.vpc\nname: v\nspec: {cidrBlock: 10.0.0.0/33}\n",
    )
    .unwrap();
    std::fs::write(
        raw.join("stack.yaml"),
        format!("apiVersion: strata.dev/v1alpha1\nkind: Stack\nmetadata: {{name: raw}}\nspec:\n  catalog: [./catalog]\n  sites:\n    us-east: {{provider: aws, config: {{region: us-east-1, endpoint: \"http://127.0.0.1:{}\"}}}}\n  components:\n    - {{name: c, blueprint: raw, site: us-east}}\n", moto.port),
    )
    .unwrap();
    let out = moto.strata(&raw.join("stack.yaml"), &["plan"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("us-east/c/aws.vpc/v: `10.0.0.0/33` is not an IPv4 CIDR block"), "{}", text(&out));
    assert!(text(&out).contains("field: spec.cidrBlock"), "{}", text(&out));

    // The emulator down: nothing can be planned, the run says so and records nothing.
    std::fs::write(&stack, &original).unwrap();
    let _ = Command::new(MOTO).args(["stop", &moto.port.to_string()]).output();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = moto.strata(&stack, &["apply", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("could not be planned"), "{}", text(&out));
    assert!(text(&out).contains("us-east/training/aws.vpc/main"), "{}", text(&out));
    let state = dir.path().join(".strata/state.json");
    if state.exists() {
        let value: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
        assert!(value["resources"].as_object().unwrap().is_empty(), "{value}");
    }
}

#[test]
fn import_takes_an_existing_vpc_under_management() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let stack = moto.stack(dir.path(), "p4d.24xlarge", 1);
    let vpc = moto.boto("print(json.dumps(ec2.create_vpc(CidrBlock='10.40.0.0/16')['Vpc']['VpcId']))");
    let vpc = vpc.as_str().unwrap();
    let imported = moto.strata(&stack, &["import", "us-east/training/aws.vpc/main", vpc]);
    assert!(imported.status.success(), "{}", text(&imported));
    // Now the stack's: tagged with its address, and planned as the existing object.
    let tags = moto.boto(&format!(
        "print(json.dumps({{t['Key']: t['Value'] for t in ec2.describe_vpcs(VpcIds=['{vpc}'])['Vpcs'][0]['Tags']}}))"
    ));
    assert_eq!(tags["strata:address"], "us-east/training/aws.vpc/main");
    let plan = moto.strata(&stack, &["plan", "--json"]);
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap_or_else(|_| panic!("{}", text(&plan)));
    let change =
        plan["changes"].as_array().unwrap().iter().find(|c| c["address"] == "us-east/training/aws.vpc/main").unwrap();
    assert_ne!(change["action"], "create", "{change}");
    let applied = moto.strata(&stack, &["apply", "--auto-approve"]);
    assert!(applied.status.success(), "{}", text(&applied));
    let vpcs = moto
        .boto("print(json.dumps(len([v for v in ec2.describe_vpcs()['Vpcs'] if v['CidrBlock'] == '10.40.0.0/16'])))");
    assert_eq!(vpcs, serde_json::json!(1), "the imported VPC was used, not a second one made");
}
