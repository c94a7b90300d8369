# RabbitMQ from Debian's packages, with the management and Prometheus plugins (as the
# official image has them), started like the official image (see README.md).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends rabbitmq-server \
 && rm -rf /var/lib/apt/lists/* \
 && rabbitmq-plugins enable --offline rabbitmq_management rabbitmq_prometheus >/dev/null \
 && printf 'loopback_users = none\nlisteners.tcp.default = 5672\nmanagement.tcp.port = 15672\n' \
      >/etc/rabbitmq/rabbitmq.conf \
 && chown -R rabbitmq:rabbitmq /var/lib/rabbitmq /etc/rabbitmq
ENV HOME=/var/lib/rabbitmq
USER rabbitmq
EXPOSE 5672 15672 15692
CMD ["rabbitmq-server"]
