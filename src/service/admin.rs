//! Site and account administration.

use super::{ServiceResult, Services, check_scope};
use crate::{
    access::CallContext,
    domain::{AccountView, ApiKey, NewLoginId, Site, SiteSettings, Uid},
};

impl Services {
    /// Creates or updates a site; says whether it was created.
    pub async fn upsert_site(
        &self,
        call: &CallContext,
        settings: SiteSettings,
    ) -> ServiceResult<(Site, bool)> {
        check_scope(call, settings.api_key.as_str())?;
        // A site gets its action secret with it, when the server can seal
        // it durably; otherwise RotateActionSecret creates it later.
        let secret = self
            .repo
            .seals_durably()
            .then(crate::access::action_link::generate_secret);
        self.storage(|| self.repo.upsert_site(settings.clone(), secret.as_ref()))
            .await
    }

    pub async fn get_site(&self, call: &CallContext, api_key: &ApiKey) -> ServiceResult<Site> {
        check_scope(call, api_key.as_str())?;
        self.storage(|| self.repo.site_by_api_key(api_key)).await
    }

    /// Creates an account or replaces its login IDs; says whether it was created.
    pub async fn upsert_account(
        &self,
        call: &CallContext,
        api_key: &ApiKey,
        uid: &Uid,
        login_ids: Vec<NewLoginId>,
    ) -> ServiceResult<(AccountView, bool)> {
        check_scope(call, api_key.as_str())?;
        let (account, created) = self
            .storage(|| self.repo.upsert_account(api_key, uid, login_ids.clone()))
            .await?;
        Ok((AccountView::of(&account), created))
    }
}
