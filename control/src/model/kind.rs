//! The seven resource kinds and the names App Mesh gives them in operation
//! names, JSON members and ARNs; every generic handler is driven by this table.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Mesh,
    VirtualNode,
    VirtualRouter,
    Route,
    VirtualService,
    VirtualGateway,
    GatewayRoute,
}

impl Kind {
    /// In dependency order: applying files in this order lets each resource
    /// find the ones it refers to.
    pub const ALL: [Kind; 7] = [
        Kind::Mesh,
        Kind::VirtualNode,
        Kind::VirtualRouter,
        Kind::Route,
        Kind::VirtualService,
        Kind::VirtualGateway,
        Kind::GatewayRoute,
    ];

    /// As in operation names (`CreateVirtualNode`) and Kubernetes kinds.
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Mesh => "Mesh",
            Kind::VirtualNode => "VirtualNode",
            Kind::VirtualRouter => "VirtualRouter",
            Kind::Route => "Route",
            Kind::VirtualService => "VirtualService",
            Kind::VirtualGateway => "VirtualGateway",
            Kind::GatewayRoute => "GatewayRoute",
        }
    }

    pub fn from_type_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_name() == name)
    }

    /// The ARN path segment, which is also the output payload member.
    pub fn segment(self) -> &'static str {
        match self {
            Kind::Mesh => "mesh",
            Kind::VirtualNode => "virtualNode",
            Kind::VirtualRouter => "virtualRouter",
            Kind::Route => "route",
            Kind::VirtualService => "virtualService",
            Kind::VirtualGateway => "virtualGateway",
            Kind::GatewayRoute => "gatewayRoute",
        }
    }

    pub fn from_segment(segment: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.segment() == segment)
    }

    pub fn name_field(self) -> &'static str {
        match self {
            Kind::Mesh => "meshName",
            Kind::VirtualNode => "virtualNodeName",
            Kind::VirtualRouter => "virtualRouterName",
            Kind::Route => "routeName",
            Kind::VirtualService => "virtualServiceName",
            Kind::VirtualGateway => "virtualGatewayName",
            Kind::GatewayRoute => "gatewayRouteName",
        }
    }

    /// The member holding the page of references in `List*` outputs.
    pub fn list_field(self) -> &'static str {
        match self {
            Kind::Mesh => "meshes",
            Kind::VirtualNode => "virtualNodes",
            Kind::VirtualRouter => "virtualRouters",
            Kind::Route => "routes",
            Kind::VirtualService => "virtualServices",
            Kind::VirtualGateway => "virtualGateways",
            Kind::GatewayRoute => "gatewayRoutes",
        }
    }

    /// Routes live inside a virtual router and gateway routes inside a
    /// virtual gateway; everything else sits directly in a mesh.
    pub fn parent(self) -> Option<Kind> {
        match self {
            Kind::Route => Some(Kind::VirtualRouter),
            Kind::GatewayRoute => Some(Kind::VirtualGateway),
            _ => None,
        }
    }

    /// The model shape that a spec of this kind must match.
    pub fn spec_shape(self) -> &'static str {
        match self {
            Kind::Mesh => "MeshSpec",
            Kind::VirtualNode => "VirtualNodeSpec",
            Kind::VirtualRouter => "VirtualRouterSpec",
            Kind::Route => "RouteSpec",
            Kind::VirtualService => "VirtualServiceSpec",
            Kind::VirtualGateway => "VirtualGatewaySpec",
            Kind::GatewayRoute => "GatewayRouteSpec",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service_model::ServiceModel;

    #[test]
    fn every_kind_has_its_five_operations_and_spec_shape() {
        let m = ServiceModel::get();
        for k in Kind::ALL {
            for verb in ["Create", "Describe", "Update", "Delete"] {
                assert!(m.operation(&format!("{verb}{}", k.type_name())).is_some());
            }
            let list = format!(
                "List{}{}",
                &k.list_field()[..1].to_uppercase(),
                &k.list_field()[1..]
            );
            assert!(m.operation(&list).is_some(), "{list}");
            assert!(m.shape(k.spec_shape()).is_some());
            assert_eq!(Kind::from_segment(k.segment()), Some(k));
        }
    }
}
