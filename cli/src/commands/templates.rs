//! `hearth templates ...`: create, list, show, update, delete.

use std::{process::ExitCode, time::SystemTime};

use hearth_sdk::proto::v1::{
    CreateTemplateRequest, DeleteTemplateRequest, GetTemplateRequest, ListTemplatesRequest,
    ListTemplatesResponse, Template, UpdateTemplateRequest,
};

use super::{Ctx, sessions::session_view, stderr};
use crate::{
    args::{TemplateArgs, TemplateName, TemplateNames, Templates},
    error::{Error, Result, Subject},
    table::{self, Table},
};

/// Runs one `templates` subcommand.
pub async fn run(ctx: &Ctx, command: Templates) -> Result<ExitCode> {
    match command {
        Templates::Create(args) => create(ctx, args).await,
        Templates::Ls => list(ctx).await,
        Templates::Get(TemplateName { name }) => get(ctx, &name).await,
        Templates::Update(args) => update(ctx, args).await,
        Templates::Rm(TemplateNames { names }) => delete(ctx, &names).await,
    }
}

/// `templates create` needs an image. Checked before dialling.
pub fn check_create(args: &TemplateArgs) -> Result<()> {
    if args.spec.image.is_none() {
        return Err(Error::Usage(
            "a template needs --image (what its sessions run)".to_owned(),
        ));
    }
    Ok(())
}

/// `templates update` needs something to change. Checked before dialling.
pub fn check_update(args: &TemplateArgs) -> Result<()> {
    if args.spec.given().is_empty() && args.description.is_none() && args.warm_pool.is_none() {
        return Err(Error::Usage(format!(
            "nothing to change: give spec flags, --description or --warm-pool \
             (`hearth templates get {}` shows the template)",
            args.name
        )));
    }
    Ok(())
}

async fn create(ctx: &Ctx, args: TemplateArgs) -> Result<ExitCode> {
    check_create(&args)?;
    let template = Template {
        name: args.name.clone(),
        description: args.description.clone().unwrap_or_default(),
        spec: Some(args.spec.to_spec()),
        warm_pool: args.warm_pool.unwrap_or(0),
        ..Default::default()
    };
    let name = args.name.as_str();
    let created = ctx
        .call("Templates/CreateTemplate", Subject::Template(name), |c| {
            let request = CreateTemplateRequest {
                template: Some(template.clone()),
            };
            async move { c.templates().create_template(request).await }
        })
        .await?;
    ctx.result(&created, || {
        format!(
            "template {name} created (warm pool {}/{}); \
             `hearth sessions create --template {name}` starts a session from it\n",
            created.pool_ready, created.warm_pool
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn get_template(ctx: &Ctx, name: &str) -> Result<Template> {
    ctx.call("Templates/GetTemplate", Subject::Template(name), |c| {
        let request = GetTemplateRequest {
            name: name.to_owned(),
        };
        async move { c.templates().get_template(request).await }
    })
    .await
}

/// Reads the template, changes what the flags give, and writes it back.
async fn update(ctx: &Ctx, args: TemplateArgs) -> Result<ExitCode> {
    check_update(&args)?;
    let name = args.name.as_str();
    let mut template = get_template(ctx, name).await?;
    let mut spec = template.spec.take().unwrap_or_default();
    args.spec.apply(&mut spec);
    template.spec = Some(spec);
    if let Some(description) = &args.description {
        template.description = description.clone();
    }
    if let Some(n) = args.warm_pool {
        template.warm_pool = n;
    }
    let updated = ctx
        .call("Templates/UpdateTemplate", Subject::Template(name), |c| {
            let request = UpdateTemplateRequest {
                template: Some(template.clone()),
            };
            async move { c.templates().update_template(request).await }
        })
        .await?;
    ctx.result(&updated, || {
        format!(
            "template {name} updated (warm pool {}/{})\n",
            updated.pool_ready, updated.warm_pool
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn list(ctx: &Ctx) -> Result<ExitCode> {
    let response = ctx
        .call("Templates/ListTemplates", Subject::None, |c| async move {
            c.templates().list_templates(ListTemplatesRequest {}).await
        })
        .await?;
    if !ctx.json && response.templates.is_empty() {
        stderr(b"no templates (`hearth templates create --help` shows how to make one)\n");
        return Ok(ExitCode::SUCCESS);
    }
    ctx.result(&response, || template_table(&response, SystemTime::now()))?;
    Ok(ExitCode::SUCCESS)
}

/// The `templates ls` table.
pub fn template_table(response: &ListTemplatesResponse, now: SystemTime) -> String {
    let mut table = Table::new(&["NAME", "IMAGE", "GPUS", "WARM POOL", "AGE", "DESCRIPTION"]);
    for t in &response.templates {
        let spec = t.spec.clone().unwrap_or_default();
        table.row(vec![
            t.name.clone(),
            spec.image,
            spec.gpus.map_or(0, |g| g.count).to_string(),
            format!("{}/{}", t.pool_ready, t.warm_pool),
            table::age(t.created_at.as_ref(), now),
            t.description.clone(),
        ]);
    }
    table.render()
}

async fn get(ctx: &Ctx, name: &str) -> Result<ExitCode> {
    let template = get_template(ctx, name).await?;
    ctx.result(&template, || template_view(&template, SystemTime::now()))?;
    Ok(ExitCode::SUCCESS)
}

/// The `templates get` view: the template's own fields, then its spec as `sessions get`
/// shows one.
pub fn template_view(t: &Template, now: SystemTime) -> String {
    let mut text = table::key_values(&[
        ("NAME", t.name.clone()),
        ("DESCRIPTION", t.description.clone()),
        ("TENANT", t.tenant.clone()),
        (
            "WARM POOL",
            format!("{} ready of {}", t.pool_ready, t.warm_pool),
        ),
        ("CREATED", table::timestamp(t.created_at.as_ref(), now)),
    ]);
    let spec_only = hearth_sdk::proto::v1::Session {
        spec: t.spec.clone(),
        ..Default::default()
    };
    text.push_str("\nSpec:\n");
    // The spec part of a session's view: from IMAGE to MAX LIFETIME.
    let view = session_view(&spec_only, now);
    for line in view
        .lines()
        .skip_while(|l| !l.starts_with("IMAGE"))
        .take_while(|l| !l.starts_with("CREATED"))
    {
        text.push_str("  ");
        text.push_str(line);
        text.push('\n');
    }
    text
}

async fn delete(ctx: &Ctx, names: &[String]) -> Result<ExitCode> {
    let mut failed = None;
    for name in names {
        let deleted = ctx
            .call("Templates/DeleteTemplate", Subject::Template(name), |c| {
                let request = DeleteTemplateRequest { name: name.clone() };
                async move { c.templates().delete_template(request).await }
            })
            .await;
        match deleted {
            Ok(response) => ctx.item(&response, || {
                format!(
                    "template {name} deleted; {} unclaimed warm sessions stopped\n",
                    response.pool_sessions_stopped
                )
            })?,
            Err(e) => {
                if names.len() > 1 {
                    stderr(format!("error: {e}\n").as_bytes());
                }
                failed = Some(e);
            }
        }
    }
    match failed {
        None => Ok(ExitCode::SUCCESS),
        Some(e) if names.len() == 1 => Err(e),
        Some(_) => Ok(ExitCode::FAILURE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_sdk::proto::v1::{GpuRequest, SessionSpec};

    fn template() -> Template {
        Template {
            name: "llama".into(),
            description: "Llama, warm".into(),
            warm_pool: 2,
            pool_ready: 1,
            spec: Some(SessionSpec {
                image: "my-llama:latest".into(),
                gpus: Some(GpuRequest {
                    count: 1,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_table_shows_the_pool_as_ready_of_target() {
        let text = template_table(
            &ListTemplatesResponse {
                templates: vec![template()],
            },
            SystemTime::now(),
        );
        let row = text.lines().nth(1).unwrap();
        assert!(
            row.starts_with("llama  my-llama:latest  1     1/2"),
            "{text}"
        );
        assert!(row.ends_with("Llama, warm"), "{text}");
    }

    #[test]
    fn the_view_shows_the_spec() {
        let text = template_view(&template(), SystemTime::now());
        assert!(text.contains("WARM POOL    1 ready of 2"), "{text}");
        assert!(text.contains("  IMAGE"), "{text}");
        assert!(text.contains("my-llama:latest"), "{text}");
        assert!(!text.contains("TURNS"), "{text}");
    }
}
