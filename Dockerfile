# The images epollbench runs: `server` (ephttpd, pipetest, pyhttpd, Debian's nginx-light) and `client`
# (Debian's httperf and wrk, deadconn, openload).
# Built by `invoke build-images` / `invoke reproduce`; BASE_IMAGE is bootstrapped with mmdebstrap from the
# host's apt mirror when it can be neither found locally nor pulled.
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends gcc libc6-dev make liburing-dev \
 && rm -rf /var/lib/apt/lists/*
COPY images/ /src/images/
RUN make -C /src/images BUILD=/out check all

FROM ${BASE_IMAGE} AS server
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends liburing2 procps nginx-light python3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ephttpd /out/pipetest /usr/local/bin/
COPY images/pyhttpd/pyhttpd.py /usr/local/bin/pyhttpd
COPY images/pylib/fdlimit.py /usr/local/bin/
RUN chmod 0755 /usr/local/bin/pyhttpd
CMD ["ephttpd", "--help"]

FROM ${BASE_IMAGE} AS client
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends httperf wrk python3 procps \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/openload /usr/local/bin/
COPY images/deadconn/deadconn.py /usr/local/bin/deadconn
COPY images/pylib/fdlimit.py /usr/local/bin/
RUN chmod 0755 /usr/local/bin/deadconn
CMD ["httperf", "--version"]
