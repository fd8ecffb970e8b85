/* SPDX-License-Identifier: MIT */
/*
 * The guest of kvm-vmm: 64-bit code that kvm-vmm --make-snapshot copies
 * into the snapshot (it runs from the restored guest memory, never from
 * here). Position independent, no stack beyond its frame, no interrupts.
 * Guest memory is identity-mapped with 2 MiB pages.
 *
 * The vCPU walks the data pages in a permutation p = D0 + (k*A + B) mod ND,
 * k = first, first + step, ...: h = pattern(set_seed, p, 0) picks the pages
 * it touches (h % 100 < touch%) and, of those, the ones it writes
 * ((h >> 32) % 100 < write%), except given-back pages. A touched page is
 * read whole and every word compared with the snapshot's pattern (a word of
 * a given-back page may also be zero); a written page then gets the write
 * pattern, pattern(snap_seed ^ WSALT, p, w), in every word. kvm-vmm.c
 * computes the same choices to check every page from the host.
 *
 * Entry registers (set by kvm-vmm):
 *   rdi snapshot seed    rsi set seed       rdx ND (data pages)  rcx D0
 *   r8  A                r9  B              r10 first k          r11 step k
 *   r12 touch %          r13 write %        r14 given-back stride S (blocks; 0: none)
 *   r15 given-back count rbx log2(block pages)                   rbp progress mark
 * A block is one host page; given-back block j is block j*S + S/2 of the
 * data area. After `rbp` steps the guest does OUT to port 0x11 (the VMM's
 * balloon starts then); at the end OUT to port 0x10 with rax = pages
 * touched, rbx = pages written, rcx = words read wrong; then HLT.
 */
#define K1 0x9e3779b97f4a7c15
#define K2 0xbf58476d1ce4e5b9
#define K3 0x94d049bb133111eb
#define WSALT 0x5772697465212121

/* Frame (rsp-relative). */
#define F_ND 0
#define F_D0 8
#define F_K 16
#define F_STEPS 24
#define F_TOUCHED 32
#define F_WRITTEN 40
#define F_BAD 48
#define F_P 56
#define F_GIVEN 64
#define F_STEP 72
#define F_H 80
#define F_BASE 88

/* rax = finish(rax + w*K2) with w in rcx: the rest of ex_pattern(). Clobbers rdx. */
.macro PATTERN_W
	mov %rcx, %rdx
	imul %r11, %rdx		/* r11 holds K2 inside the word loops */
	add F_BASE(%rsp), %rdx
	mov %rdx, %rax
	shr $31, %rdx
	xor %rdx, %rax
	movabs $K3, %rdx
	imul %rdx, %rax
.endm

	.section .rodata
	.p2align 6
	.globl kvm_guest_code
	.globl kvm_guest_code_end
kvm_guest_code:
	.code64
	sub $128, %rsp
	mov %rdx, F_ND(%rsp)
	mov %rcx, F_D0(%rsp)
	mov %r10, F_K(%rsp)
	movq $0, F_STEPS(%rsp)
	movq $0, F_TOUCHED(%rsp)
	movq $0, F_WRITTEN(%rsp)
	movq $0, F_BAD(%rsp)
	mov %r11, F_STEP(%rsp)	/* r11 holds K2 in the word loops */

.Lnext:
	mov F_K(%rsp), %rax
	cmp F_ND(%rsp), %rax
	jae .Ldone
	mov F_STEP(%rsp), %rdx
	add %rdx, F_K(%rsp)
	mul %r8			/* k*A: both below 2^32 */
	add %r9, %rax
	xor %edx, %edx
	divq F_ND(%rsp)
	add F_D0(%rsp), %rdx
	mov %rdx, F_P(%rsp)
	incq F_STEPS(%rsp)
	cmp F_STEPS(%rsp), %rbp
	jne 1f
	outb %al, $0x11		/* progress: the balloon may start */
1:
	/* h = pattern(set seed, p, 0) */
	mov F_P(%rsp), %rax
	movabs $K1, %rdx
	imul %rdx, %rax
	xor %rsi, %rax
	mov %rax, %rdx
	shr $31, %rdx
	xor %rdx, %rax
	movabs $K3, %rdx
	imul %rdx, %rax
	mov %rax, F_H(%rsp)
	xor %edx, %edx
	mov $100, %ecx
	div %rcx
	cmp %r12, %rdx
	jae .Lnext
	incq F_TOUCHED(%rsp)

	/* given back? block q = (p - D0) >> rbx; q % S == S/2 and q / S < count */
	movq $0, F_GIVEN(%rsp)
	test %r14, %r14
	jz 2f
	mov F_P(%rsp), %rax
	sub F_D0(%rsp), %rax
	mov %bl, %cl
	shr %cl, %rax
	xor %edx, %edx
	div %r14
	cmp %r15, %rax
	jae 2f
	mov %r14, %rcx
	shr $1, %rcx
	cmp %rcx, %rdx
	jne 2f
	movq $1, F_GIVEN(%rsp)
2:
	/* read every word: base = snap seed ^ p*K1 */
	mov F_P(%rsp), %rax
	movabs $K1, %rdx
	imul %rdx, %rax
	xor %rdi, %rax
	mov %rax, F_BASE(%rsp)
	mov F_P(%rsp), %r10
	shl $12, %r10
	movabs $K2, %r11
	xor %ecx, %ecx
3:
	PATTERN_W
	mov (%r10,%rcx,8), %rdx
	cmp %rax, %rdx
	je 4f
	test %rdx, %rdx
	jnz 5f
	cmpq $0, F_GIVEN(%rsp)
	jne 4f
5:
	incq F_BAD(%rsp)
4:
	inc %rcx
	cmp $512, %rcx
	jb 3b

	/* write? never a given-back page */
	cmpq $0, F_GIVEN(%rsp)
	jne .Lnext
	mov F_H(%rsp), %rax
	shr $32, %rax
	xor %edx, %edx
	mov $100, %ecx
	div %rcx
	cmp %r13, %rdx
	jae .Lnext
	incq F_WRITTEN(%rsp)
	mov F_P(%rsp), %rax
	movabs $K1, %rdx
	imul %rdx, %rax
	xor %rdi, %rax
	movabs $WSALT, %rdx
	xor %rdx, %rax
	mov %rax, F_BASE(%rsp)
	xor %ecx, %ecx
6:
	PATTERN_W
	mov %rax, (%r10,%rcx,8)
	inc %rcx
	cmp $512, %rcx
	jb 6b
	jmp .Lnext

.Ldone:
	mov F_TOUCHED(%rsp), %rax
	mov F_WRITTEN(%rsp), %rbx
	mov F_BAD(%rsp), %rcx
	outb %al, $0x10
	hlt
	jmp .Ldone
kvm_guest_code_end:

	.section .note.GNU-stack, "", @progbits
