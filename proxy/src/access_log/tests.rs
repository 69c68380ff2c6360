use std::time::Duration;

use prost::Message;
use xds_protos::envoy::config::core::v3::{
    substitution_format_string::Format as SfFormat, SubstitutionFormatString,
};

use super::*;
use crate::format::StreamInfo;

fn file_logger(
    path: &std::path::Path,
    format: Option<file_access_log::AccessLogFormat>,
) -> AccessLog {
    let f = FileAccessLog {
        path: path.display().to_string(),
        access_log_format: format,
    };
    AccessLog {
        name: "envoy.access_loggers.file".into(),
        filter: None,
        config_type: Some(ConfigType::TypedConfig(prost_types::Any {
            type_url: format!("type.googleapis.com/{FILE}"),
            value: f.encode_to_vec(),
        })),
    }
}

fn read_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..200 {
        let lines: Vec<String> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never had {n} lines", path.display());
}

#[test]
#[allow(deprecated)]
fn text_and_json_lines_reach_the_file() {
    let dir = std::env::temp_dir().join(format!("trellis-al-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text_path = dir.join("text.log");
    let json_path = dir.join("json.log");
    let mut fields = std::collections::BTreeMap::new();
    for (k, v) in [
        ("code", "%RESPONSE_CODE%"),
        ("peer", "%DOWNSTREAM_REMOTE_ADDRESS%"),
        ("host", "%UPSTREAM_HOST%"),
    ] {
        fields.insert(
            k.to_string(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(v.into())),
            },
        );
    }
    let logs = AccessLogs::compile(
        &[
            file_logger(
                &text_path,
                Some(file_access_log::AccessLogFormat::LogFormat(
                    SubstitutionFormatString {
                        format: Some(SfFormat::TextFormat("%RESPONSE_CODE% %PROTOCOL%\n".into())),
                        ..Default::default()
                    },
                )),
            ),
            file_logger(
                &json_path,
                Some(file_access_log::AccessLogFormat::JsonFormat(
                    prost_types::Struct { fields },
                )),
            ),
        ],
        "access_log",
    )
    .unwrap();
    let mut info = StreamInfo::new("127.0.0.1:4000".parse().unwrap(), None);
    info.response_code = Some(204);
    info.protocol = Some(http::Version::HTTP_2);
    logs.log(&Context::new(&info));
    assert_eq!(read_lines(&text_path, 1), ["204 HTTP/2"]);
    let json: serde_json::Value = serde_json::from_str(&read_lines(&json_path, 1)[0]).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"code": 204, "peer": "127.0.0.1:4000", "host": null})
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_loggers_name_the_field() {
    let bad = file_logger(
        std::path::Path::new("/tmp/x.log"),
        Some(file_access_log::AccessLogFormat::LogFormat(
            SubstitutionFormatString {
                format: Some(SfFormat::TextFormatSource(
                    xds_protos::envoy::config::core::v3::DataSource {
                        specifier: Some(Specifier::InlineString("%BOGUS%".into())),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            },
        )),
    );
    let e = AccessLogs::compile(&[bad], "access_log").unwrap_err();
    assert_eq!(
        e.path,
        "access_log[0].typed_config.log_format.text_format_source"
    );
    assert!(e.reason.contains("BOGUS"), "{e}");
    let unopenable = file_logger(std::path::Path::new("/nonexistent-dir/x.log"), None);
    let e = AccessLogs::compile(&[unopenable], "access_log").unwrap_err();
    assert_eq!(e.path, "access_log[0].typed_config.path");
}
