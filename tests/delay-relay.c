/* SPDX-License-Identifier: MIT */
/*
 * A TCP relay on 127.0.0.1 that delays every byte by half a round-trip
 * time in each direction: latency for a real server (nginx) where the
 * kernel has no netem. Each direction of each connection has a reader
 * thread (chunks stamped on arrival, queued) and a writer thread (each
 * chunk sent when its stamp plus the delay has passed), so the link keeps
 * its bandwidth while every chunk arrives one delay late. Loopback only.
 *
 * usage: delay-relay TARGET_PORT RTT_US
 * Prints the port it listens on, then relays until killed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64u << 10)
#define QLEN 256		/* chunks queued per direction (16 MiB) */

struct chunk {
	uint64_t due_ns;
	size_t len;		/* 0: end of stream */
	char data[CHUNK];
};

struct pipe_dir {
	int from, to;
	uint64_t delay_ns;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct chunk *q;
	unsigned head, count;
	struct conn *c;
};

struct conn {
	struct pipe_dir d[2];
	pthread_mutex_t mu;
	int ended;		/* writers done */
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *reader(void *arg)
{
	struct pipe_dir *p = arg;

	for (;;) {
		struct chunk *c;
		ssize_t n;

		pthread_mutex_lock(&p->mu);
		while (p->count == QLEN)
			pthread_cond_wait(&p->cv, &p->mu);
		c = &p->q[(p->head + p->count) % QLEN];
		pthread_mutex_unlock(&p->mu);
		n = read(p->from, c->data, CHUNK);	/* only this thread writes the tail slot */
		c->len = n > 0 ? (size_t)n : 0;
		c->due_ns = now_ns() + p->delay_ns;
		pthread_mutex_lock(&p->mu);
		p->count++;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
		if (n <= 0)
			return NULL;
	}
}

static void finish_conn(struct conn *c)
{
	int last;

	pthread_mutex_lock(&c->mu);
	last = ++c->ended == 2;
	pthread_mutex_unlock(&c->mu);
	if (!last)
		return;
	close(c->d[0].from);
	close(c->d[1].from);
	free(c->d[0].q);
	free(c->d[1].q);
	free(c);
}

static void *writer(void *arg)
{
	struct pipe_dir *p = arg;
	bool broken = false;

	for (;;) {
		struct chunk *c;
		uint64_t t;

		pthread_mutex_lock(&p->mu);
		while (!p->count)
			pthread_cond_wait(&p->cv, &p->mu);
		c = &p->q[p->head];
		pthread_mutex_unlock(&p->mu);
		if ((t = now_ns()) < c->due_ns) {
			struct timespec ts = { (time_t)((c->due_ns - t) / 1000000000u), (long)((c->due_ns - t) % 1000000000u) };

			nanosleep(&ts, NULL);
		}
		if (!c->len) {
			shutdown(p->to, SHUT_WR);
			break;
		}
		for (size_t off = 0; off < c->len && !broken;) {
			ssize_t n = write(p->to, c->data + off, c->len - off);

			if (n <= 0) {
				broken = true;	/* the peer went: stop reading the other side too */
				shutdown(p->from, SHUT_RDWR);
			} else {
				off += (size_t)n;
			}
		}
		pthread_mutex_lock(&p->mu);
		p->head = (p->head + 1) % QLEN;
		p->count--;
		pthread_cond_broadcast(&p->cv);
		pthread_mutex_unlock(&p->mu);
	}
	finish_conn(p->c);
	return NULL;
}

static int connect_to(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a))) {
		if (s >= 0)
			close(s);
		return -1;
	}
	setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return s;
}

static void start(int client, int port, uint64_t delay_ns)
{
	struct conn *c = calloc(1, sizeof(*c));
	int server = connect_to(port), one = 1;
	pthread_t t;

	if (!c || server < 0) {
		close(client);
		free(c);
		if (server >= 0)
			close(server);
		return;
	}
	setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	pthread_mutex_init(&c->mu, NULL);
	for (int i = 0; i < 2; i++) {
		struct pipe_dir *p = &c->d[i];

		p->from = i ? server : client;
		p->to = i ? client : server;
		p->delay_ns = delay_ns;
		p->c = c;
		p->q = malloc(QLEN * sizeof(*p->q));
		pthread_mutex_init(&p->mu, NULL);
		pthread_cond_init(&p->cv, NULL);
		if (!p->q)
			abort();
	}
	for (int i = 0; i < 2; i++) {
		pthread_create(&t, NULL, reader, &c->d[i]);
		pthread_detach(t);
		pthread_create(&t, NULL, writer, &c->d[i]);
		pthread_detach(t);
	}
}

int main(int argc, char **argv)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	int ls, port;
	uint64_t delay_ns;

	if (argc != 3) {
		fprintf(stderr, "usage: delay-relay TARGET_PORT RTT_US\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);	/* a peer gone mid-write is an error of that write, not the relay's end */
	port = atoi(argv[1]);
	delay_ns = strtoull(argv[2], NULL, 10) * 1000u / 2;	/* half each way */
	ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof(a)) || listen(ls, 64) ||
	    getsockname(ls, (struct sockaddr *)&a, &al)) {
		perror("delay-relay");
		return 1;
	}
	printf("%d\n", ntohs(a.sin_port));
	fflush(stdout);
	for (;;) {
		int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);

		if (c < 0 && errno != EINTR)
			return 1;
		if (c >= 0)
			start(c, port, delay_ns);
	}
}
