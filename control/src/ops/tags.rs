//! TagResource, UntagResource and ListTagsForResource, addressed by ARN.

use serde_json::{json, Value};

use super::resources::parse_tags;
use super::{pagination, AppMesh};
use crate::error::{ApiError, ErrorKind};
use crate::model::{Arn, Resource};
use crate::store::Tx;

/// App Mesh's per-resource tag limit.
const MAX_TAGS: usize = 50;

impl AppMesh {
    fn tagged(&self, tx: &Tx<'_>, input: &Value) -> Result<Resource, ApiError> {
        let text = input["resourceArn"].as_str().unwrap_or_default();
        let arn = Arn::parse(text).ok_or_else(|| {
            ApiError::bad_request(format!(
                "resourceArn: {text} is not an App Mesh resource ARN"
            ))
        })?;
        let not_found = || ApiError::not_found(format!("Resource {text} not found"));
        if arn.region != self.identity.region || arn.account != self.identity.account {
            return Err(not_found());
        }
        tx.get(&arn.key)?.ok_or_else(not_found)
    }

    pub(super) fn tag_resource(&self, tx: &mut Tx<'_>, input: &Value) -> Result<Value, ApiError> {
        let mut resource = self.tagged(tx, input)?;
        for tag in parse_tags(&input["tags"])? {
            match resource.tags.iter_mut().find(|t| t.key == tag.key) {
                Some(existing) => existing.value = tag.value,
                None => resource.tags.push(tag),
            }
        }
        if resource.tags.len() > MAX_TAGS {
            return Err(ApiError::new(
                ErrorKind::TooManyTags,
                format!("A resource can have at most {MAX_TAGS} tags"),
            ));
        }
        tx.replace(&resource)?;
        Ok(json!({}))
    }

    pub(super) fn untag_resource(&self, tx: &mut Tx<'_>, input: &Value) -> Result<Value, ApiError> {
        let mut resource = self.tagged(tx, input)?;
        let keys: Vec<&str> = input["tagKeys"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        resource.tags.retain(|t| !keys.contains(&t.key.as_str()));
        tx.replace(&resource)?;
        Ok(json!({}))
    }

    pub(super) fn list_tags(&self, tx: &mut Tx<'_>, input: &Value) -> Result<Value, ApiError> {
        let resource = self.tagged(tx, input)?;
        let limit = pagination::limit(input);
        let start = match pagination::position(input)? {
            Some(p) => p
                .parse::<usize>()
                .map_err(|_| ApiError::bad_request("The nextToken is invalid"))?,
            None => 0,
        };
        let page: Vec<_> = resource.tags.iter().skip(start).take(limit).collect();
        let mut out = json!({ "tags": page });
        if start + limit < resource.tags.len() {
            out["nextToken"] = json!(pagination::encode(&(start + limit).to_string()));
        }
        Ok(out)
    }
}
