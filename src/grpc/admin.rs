//! AdminService: sites and accounts.

use tonic::{Request, Response, Status};

use super::{
    AppState, auth::site_scope, call_context, convert, record_site, respond, status::ApiError,
};
use crate::proto::v1::{self as pb, admin_service_server::AdminService};

#[derive(Debug, Clone)]
pub struct AdminApi {
    state: AppState,
}

impl AdminApi {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn upsert_site(
        &self,
        request: Request<pb::UpsertSiteRequest>,
    ) -> Result<Response<pb::UpsertSiteResponse>, Status> {
        let ctx = call_context(&request);
        let scope = site_scope(&request);
        let result = async {
            let settings = convert::upsert_site(request.into_inner())?;
            record_site(settings.api_key.as_str());
            scope.check(settings.api_key.as_str())?;
            let (site, created) = self.state.repo.upsert_site(settings).await?;
            Ok::<_, ApiError>(pb::UpsertSiteResponse {
                site: Some(convert::site(site)),
                created,
                call_id: ctx.call_id.clone(),
            })
        }
        .await;
        respond(&ctx, result)
    }

    async fn get_site(
        &self,
        request: Request<pb::GetSiteRequest>,
    ) -> Result<Response<pb::GetSiteResponse>, Status> {
        let ctx = call_context(&request);
        let scope = site_scope(&request);
        let result = async {
            let pb::GetSiteRequest { api_key } = request.into_inner();
            let api_key = convert::api_key(&api_key)?;
            record_site(api_key.as_str());
            scope.check(api_key.as_str())?;
            let site = self.state.repo.site_by_api_key(&api_key).await?;
            Ok::<_, ApiError>(pb::GetSiteResponse {
                site: Some(convert::site(site)),
                call_id: ctx.call_id.clone(),
            })
        }
        .await;
        respond(&ctx, result)
    }

    async fn upsert_account(
        &self,
        request: Request<pb::UpsertAccountRequest>,
    ) -> Result<Response<pb::UpsertAccountResponse>, Status> {
        let ctx = call_context(&request);
        let scope = site_scope(&request);
        let result = async {
            let (api_key, uid, login_ids) = convert::upsert_account(request.into_inner())?;
            record_site(api_key.as_str());
            scope.check(api_key.as_str())?;
            let (account, created) = self
                .state
                .repo
                .upsert_account(&api_key, &uid, login_ids)
                .await?;
            Ok::<_, ApiError>(pb::UpsertAccountResponse {
                account: Some(convert::account(&account)),
                created,
                call_id: ctx.call_id.clone(),
            })
        }
        .await;
        respond(&ctx, result)
    }
}
