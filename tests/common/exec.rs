//! Building and running REAPI actions against the daemon, for the
//! execution tests.

#![allow(dead_code, deprecated)]

use std::collections::BTreeMap;
use std::time::Duration;

use prost::Message;
use tonic::transport::Channel;

use super::*;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient as CasClient;
use reapi::execution_client::ExecutionClient;

/// An action to build: input files, a command, and its outputs.
#[derive(Clone, Default)]
pub struct ActionSpec {
    pub files: Vec<(String, Vec<u8>, bool)>,
    pub symlinks: Vec<(String, String)>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub output_paths: Vec<String>,
    pub output_files: Vec<String>,
    pub output_dirs: Vec<String>,
    pub timeout: Option<Duration>,
    pub platform: Vec<(String, String)>,
    pub do_not_cache: bool,
    /// Added to the Action's salt, to make otherwise identical actions
    /// distinct.
    pub salt: String,
}

impl ActionSpec {
    pub fn sh(script: &str) -> ActionSpec {
        ActionSpec {
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec![("PATH".into(), "/bin:/usr/bin".into())],
            ..Default::default()
        }
    }

    pub fn file(mut self, path: &str, data: &[u8]) -> Self {
        self.files.push((path.into(), data.to_vec(), false));
        self
    }

    pub fn exe(mut self, path: &str, data: &[u8]) -> Self {
        self.files.push((path.into(), data.to_vec(), true));
        self
    }

    pub fn outputs(mut self, paths: &[&str]) -> Self {
        self.output_paths = paths.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn salt(mut self, salt: &str) -> Self {
        self.salt = salt.into();
        self
    }
}

#[derive(Default)]
struct DirBuilder {
    files: BTreeMap<String, (Digest, bool)>,
    dirs: BTreeMap<String, DirBuilder>,
    symlinks: BTreeMap<String, String>,
}

impl DirBuilder {
    fn insert(&mut self, path: &str, leaf: Leaf) {
        match path.split_once('/') {
            Some((dir, rest)) => self.dirs.entry(dir.into()).or_default().insert(rest, leaf),
            None => match leaf {
                Leaf::File(d, x) => {
                    self.files.insert(path.into(), (d, x));
                }
                Leaf::Symlink(t) => {
                    self.symlinks.insert(path.into(), t);
                }
            },
        }
    }

    /// Encodes the tree; pushes every Directory blob; returns the root's digest.
    fn build(&self, blobs: &mut Vec<Vec<u8>>) -> Digest {
        let dir = reapi::Directory {
            files: self
                .files
                .iter()
                .map(|(name, (d, x))| reapi::FileNode {
                    name: name.clone(),
                    digest: Some(d.to_proto()),
                    is_executable: *x,
                    ..Default::default()
                })
                .collect(),
            directories: self
                .dirs
                .iter()
                .map(|(name, sub)| reapi::DirectoryNode {
                    name: name.clone(),
                    digest: Some(sub.build(blobs).to_proto()),
                })
                .collect(),
            symlinks: self
                .symlinks
                .iter()
                .map(|(name, target)| reapi::SymlinkNode {
                    name: name.clone(),
                    target: target.clone(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let bytes = dir.encode_to_vec();
        let d = Digest::of_bytes(&bytes);
        blobs.push(bytes);
        d
    }
}

enum Leaf {
    File(Digest, bool),
    Symlink(String),
}

/// Encodes the action and its inputs. Returns (action digest, blobs).
pub fn encode(spec: &ActionSpec) -> (Digest, Vec<Vec<u8>>) {
    let mut blobs = Vec::new();
    let mut root = DirBuilder::default();
    for (path, data, x) in &spec.files {
        let d = Digest::of_bytes(data);
        blobs.push(data.clone());
        root.insert(path, Leaf::File(d, *x));
    }
    for (path, target) in &spec.symlinks {
        root.insert(path, Leaf::Symlink(target.clone()));
    }
    let input_root = root.build(&mut blobs);
    let command = reapi::Command {
        arguments: spec.args.clone(),
        environment_variables: spec
            .env
            .iter()
            .map(|(n, v)| reapi::command::EnvironmentVariable {
                name: n.clone(),
                value: v.clone(),
            })
            .collect(),
        output_paths: spec.output_paths.clone(),
        output_files: spec.output_files.clone(),
        output_directories: spec.output_dirs.clone(),
        working_directory: spec.working_dir.clone(),
        ..Default::default()
    };
    let command_bytes = command.encode_to_vec();
    let command_digest = Digest::of_bytes(&command_bytes);
    blobs.push(command_bytes);
    let action = reapi::Action {
        command_digest: Some(command_digest.to_proto()),
        input_root_digest: Some(input_root.to_proto()),
        timeout: spec.timeout.map(|t| prost_types::Duration {
            seconds: t.as_secs() as i64,
            nanos: t.subsec_nanos() as i32,
        }),
        do_not_cache: spec.do_not_cache,
        salt: spec.salt.as_bytes().to_vec().into(),
        platform: (!spec.platform.is_empty()).then(|| reapi::Platform {
            properties: spec
                .platform
                .iter()
                .map(|(n, v)| reapi::platform::Property {
                    name: n.clone(),
                    value: v.clone(),
                })
                .collect(),
        }),
    };
    let action_bytes = action.encode_to_vec();
    let action_digest = Digest::of_bytes(&action_bytes);
    blobs.push(action_bytes);
    (action_digest, blobs)
}

/// Uploads blobs, 100 to a BatchUpdateBlobs request.
pub async fn upload(ch: &Channel, blobs: &[Vec<u8>]) {
    upload_batched(ch, blobs, 100).await;
}

/// Uploads the action and its inputs. Returns the action digest.
pub async fn prepare(ch: &Channel, spec: &ActionSpec) -> Digest {
    let (d, blobs) = encode(spec);
    upload(ch, &blobs).await;
    d
}

/// The operations streamed by Execute, up to the last.
pub async fn execute_ops(ch: &Channel, action: &Digest, skip_cache: bool) -> Vec<super::Operation> {
    let mut stream = ExecutionClient::new(ch.clone())
        .execute(reapi::ExecuteRequest {
            action_digest: Some(action.to_proto()),
            skip_cache_lookup: skip_cache,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut ops = Vec::new();
    while let Some(op) = stream.message().await.unwrap() {
        ops.push(op);
    }
    ops
}

pub fn response_of(op: &super::Operation) -> reapi::ExecuteResponse {
    assert!(op.done, "operation {} is not done", op.name);
    match &op.result {
        Some(nativelink_lre::proto::google::longrunning::operation::Result::Response(any)) => {
            assert_eq!(
                any.type_url,
                "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse"
            );
            reapi::ExecuteResponse::decode(any.value.as_slice()).unwrap()
        }
        other => panic!("operation ended without a response: {other:?}"),
    }
}

/// Uploads, executes and returns the final response.
pub async fn run(ch: &Channel, spec: &ActionSpec, skip_cache: bool) -> reapi::ExecuteResponse {
    let action = prepare(ch, spec).await;
    let ops = execute_ops(ch, &action, skip_cache).await;
    response_of(ops.last().expect("Execute streamed nothing"))
}

pub async fn read_blob(ch: &Channel, d: &reapi::Digest) -> Vec<u8> {
    let resp = CasClient::new(ch.clone())
        .batch_read_blobs(reapi::BatchReadBlobsRequest {
            digests: vec![d.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let r = &resp.responses[0];
    assert_eq!(
        r.status.as_ref().unwrap().code,
        0,
        "blob {d:?} not readable"
    );
    r.data.to_vec()
}

pub async fn stdout_of(ch: &Channel, r: &reapi::ExecuteResponse) -> String {
    let result = r.result.as_ref().expect("no result");
    String::from_utf8_lossy(&read_blob(ch, result.stdout_digest.as_ref().unwrap()).await)
        .into_owned()
}

pub async fn stderr_of(ch: &Channel, r: &reapi::ExecuteResponse) -> String {
    let result = r.result.as_ref().expect("no result");
    String::from_utf8_lossy(&read_blob(ch, result.stderr_digest.as_ref().unwrap()).await)
        .into_owned()
}

pub async fn output_file(ch: &Channel, r: &reapi::ExecuteResponse, path: &str) -> Vec<u8> {
    let result = r.result.as_ref().expect("no result");
    let f = result
        .output_files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("no output file {path}: {:?}", result.output_files));
    read_blob(ch, f.digest.as_ref().unwrap()).await
}

/// Processes on the host whose command line contains `token`.
pub fn host_processes_with(token: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(token)
        {
            // Zombies waiting for init to reap them are not running.
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            if !stat.contains(") Z ") {
                out.push(pid);
            }
        }
    }
    out
}
