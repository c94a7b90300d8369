//! Diesel's view of the tables (see `shared/migrations`).

diesel::table! {
    users (id) {
        id -> Text,
        credits -> Int4,
        event_seq -> Int8,
    }
}

diesel::table! {
    generations (id) {
        id -> Text,
        user_id -> Text,
        job_id -> Nullable<Text>,
        prompt -> Text,
        status -> Text,
        credits_used -> Int4,
        image_urls -> Array<Text>,
        error_message -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
        model_id -> Nullable<Text>,
        model_name -> Nullable<Text>,
        source_id -> Nullable<Text>,
        thumb_urls -> Array<Text>,
        cancel_requested_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    ai_models (id) {
        id -> Text,
        user_id -> Text,
        job_id -> Nullable<Text>,
        name -> Text,
        status -> Text,
        credits_used -> Int4,
        model_version -> Nullable<Text>,
        weights_url -> Nullable<Text>,
        error_message -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        completed_at -> Nullable<Timestamptz>,
        cancel_requested_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    credit_transactions (id) {
        id -> Int8,
        user_id -> Text,
        amount -> Int4,
        kind -> Text,
        job_id -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    job_events (user_id, seq) {
        user_id -> Text,
        seq -> Int8,
        payload -> Jsonb,
        created_at -> Timestamptz,
        published_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(generations -> users (user_id));
diesel::joinable!(ai_models -> users (user_id));
diesel::joinable!(credit_transactions -> users (user_id));
diesel::joinable!(job_events -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    users,
    generations,
    ai_models,
    credit_transactions,
    job_events,
    unconfirmed_jobs,
    webhook_attempts,
    operator_actions,
);

diesel::table! {
    unconfirmed_jobs (job_id) {
        job_id -> Text,
        first_at -> Timestamptz,
        last_at -> Timestamptz,
        answers -> Int4,
    }
}

diesel::table! {
    webhook_attempts (id) {
        id -> Int8,
        at -> Timestamptz,
        webhook_id -> Text,
        replicate_id -> Nullable<Text>,
        job_row_id -> Nullable<Text>,
        kind -> Nullable<Text>,
        status -> Nullable<Text>,
        outcome -> Text,
        detail -> Text,
        attempt -> Int4,
        replays -> Int4,
        duration_ms -> Float4,
        waited_ms -> Nullable<Float4>,
    }
}

diesel::table! {
    operator_actions (id) {
        id -> Int8,
        at -> Timestamptz,
        action -> Text,
        job_row_id -> Nullable<Text>,
        detail -> Text,
    }
}
