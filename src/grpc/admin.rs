//! AdminService: sites and accounts.

use tonic::{Request, Response, Status};

use super::{call_context, convert, respond, status::ApiError};
use crate::{
    proto::v1::{self as pb, admin_service_server::AdminService},
    service::Services,
};

#[derive(Debug, Clone)]
pub struct AdminApi {
    services: Services,
}

impl AdminApi {
    pub fn new(services: Services) -> Self {
        Self { services }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn upsert_site(
        &self,
        request: Request<pb::UpsertSiteRequest>,
    ) -> Result<Response<pb::UpsertSiteResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let settings = convert::upsert_site(request.into_inner()).parse()?;
            let (site, created) = self.services.upsert_site(&call, settings).await?;
            Ok::<_, ApiError>(pb::UpsertSiteResponse {
                site: Some(convert::site(site)),
                created,
                call_id: call.call_id.clone(),
            })
        }
        .await;
        respond(&call, result)
    }

    async fn get_site(
        &self,
        request: Request<pb::GetSiteRequest>,
    ) -> Result<Response<pb::GetSiteResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let pb::GetSiteRequest { api_key } = request.into_inner();
            let api_key = convert::api_key(&api_key)?;
            let site = self.services.get_site(&call, &api_key).await?;
            Ok::<_, ApiError>(pb::GetSiteResponse {
                site: Some(convert::site(site)),
                call_id: call.call_id.clone(),
            })
        }
        .await;
        respond(&call, result)
    }

    async fn upsert_account(
        &self,
        request: Request<pb::UpsertAccountRequest>,
    ) -> Result<Response<pb::UpsertAccountResponse>, Status> {
        let call = call_context(&request);
        let result = async {
            let (api_key, uid, login_ids) = convert::upsert_account(request.into_inner())?;
            let (account, created) = self
                .services
                .upsert_account(&call, &api_key, &uid, login_ids)
                .await?;
            Ok::<_, ApiError>(pb::UpsertAccountResponse {
                account: Some(convert::account(account)),
                created,
                call_id: call.call_id.clone(),
            })
        }
        .await;
        respond(&call, result)
    }
}
